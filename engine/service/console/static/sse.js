// Server-Sent Events read with fetch(): EventSource cannot send the Authorization header, and
// the credential must not go into a URL. Parses the text/event-stream format, remembers the
// last event id and reconnects by itself (Last-Event-ID), as EventSource would.

import { authorization } from "./api.js";

/**
 * Open `path` as an event stream. handlers: onEvent(body, id) for job events (the bodies the
 * publishers send), onJob(summary) for job state changes, onEnd(), onStatus(text).
 * Returns { close() }.
 */
export function openStream(path, handlers = {}) {
  let closed = false;
  let lastId = null;
  let retry = 2000;
  let controller = null;

  function dispatch(kind, data, id) {
    if (id !== null) lastId = id;
    if (kind === "end") {
      closed = true;
      if (handlers.onEnd) handlers.onEnd();
      return;
    }
    let body;
    try { body = JSON.parse(data); } catch { return; }
    if (kind === "job") { if (handlers.onJob) handlers.onJob(body); }
    else if (handlers.onEvent) handlers.onEvent(body, id);
  }

  async function connect() {
    controller = new AbortController();
    const headers = { Accept: "text/event-stream", Authorization: authorization() || "" };
    if (lastId !== null) headers["Last-Event-ID"] = lastId;
    const answer = await fetch(path, { headers, signal: controller.signal, cache: "no-store" });
    if (answer.status === 401 || answer.status === 404) {
      closed = true;
      if (handlers.onStatus) handlers.onStatus(`stream refused (${answer.status})`);
      return;
    }
    if (!answer.ok || !answer.body) throw new Error(`stream answered ${answer.status}`);
    if (handlers.onStatus) handlers.onStatus("live");
    const reader = answer.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let kind = "message";
    let data = [];
    let id = null;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let cut;
      while ((cut = buffer.search(/\r\n|\r|\n/)) >= 0) {
        const line = buffer.slice(0, cut);
        buffer = buffer.slice(cut + (buffer.startsWith("\r\n", cut) ? 2 : 1));
        if (line === "") {
          if (data.length) dispatch(kind, data.join("\n"), id);
          kind = "message"; data = []; id = null;
          if (closed) { controller.abort(); return; }
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let text = colon < 0 ? "" : line.slice(colon + 1);
        if (text.startsWith(" ")) text = text.slice(1);
        if (field === "data") data.push(text);
        else if (field === "event") kind = text;
        else if (field === "id") id = text;
        else if (field === "retry" && /^\d+$/.test(text)) retry = Number(text);
      }
    }
  }

  (async () => {
    while (!closed) {
      try { await connect(); } catch (error) {
        if (closed) break;
        if (handlers.onStatus) handlers.onStatus("reconnecting…");
      }
      if (!closed) await new Promise((done) => setTimeout(done, retry));
    }
  })();

  return {
    close() {
      closed = true;
      if (controller) controller.abort();
    },
  };
}
