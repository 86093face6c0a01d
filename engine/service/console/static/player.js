// A small Media Source Extensions player for vipe's own DASH output (CMAF, SegmentTemplate
// with a SegmentTimeline or a fixed duration), clear or ClearKey-encrypted (Base64Key jobs:
// the license comes from POST /Job/{id}/ClearKey). Segments come through the authenticated
// output endpoint. Rendition choice, seeking, and a thumbnail strip from thumbnails.vtt.

import { api, outputFile } from "./api.js";
import { el, replace } from "./dom.js";

const AHEAD = 12; // seconds buffered ahead of the play position

function seconds(duration) {
  const m = /^P(?:T)?(?:(\d+(?:\.\d+)?)H)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)S)?$/.exec(duration || "");
  if (!m) return 0;
  return Number(m[1] || 0) * 3600 + Number(m[2] || 0) * 60 + Number(m[3] || 0);
}

function child(node, name) {
  return Array.from(node.children).find((c) => c.localName === name) || null;
}

function fill(template, rep, number, time) {
  return template.replace(/\$(RepresentationID|Number|Bandwidth|Time)(?:%0(\d+)d)?\$/g, (_, name, width) => {
    const value = String({ RepresentationID: rep.id, Number: number, Bandwidth: rep.bandwidth, Time: time }[name]);
    return width ? value.padStart(Number(width), "0") : value;
  }).replace(/\$\$/g, "$");
}

/** The video and audio representations of an MPD text, with their segment lists. */
export function parseMpd(text) {
  const doc = new DOMParser().parseFromString(text, "application/xml");
  const mpd = doc.documentElement;
  if (mpd.localName !== "MPD") throw new Error("not a DASH manifest");
  const duration = seconds(mpd.getAttribute("mediaPresentationDuration"));
  const tracks = { video: [], audio: [] };
  let protectedContent = false;
  for (const set of mpd.getElementsByTagNameNS("*", "AdaptationSet")) {
    const mime = set.getAttribute("mimeType") || "";
    const kind = set.getAttribute("contentType") || mime.split("/")[0];
    if (kind !== "video" && kind !== "audio") continue;
    if (set.getElementsByTagNameNS("*", "ContentProtection").length) protectedContent = true;
    for (const node of set.getElementsByTagNameNS("*", "Representation")) {
      const template = child(node, "SegmentTemplate") || child(set, "SegmentTemplate");
      if (!template) continue;
      const rep = {
        id: node.getAttribute("id"),
        kind,
        mime: node.getAttribute("mimeType") || mime,
        codecs: node.getAttribute("codecs") || set.getAttribute("codecs") || "",
        bandwidth: Number(node.getAttribute("bandwidth") || 0),
        width: Number(node.getAttribute("width") || 0),
        height: Number(node.getAttribute("height") || 0),
        segments: [],
      };
      const timescale = Number(template.getAttribute("timescale") || 1);
      let number = Number(template.getAttribute("startNumber") || 1);
      const media = template.getAttribute("media");
      rep.init = fill(template.getAttribute("initialization") || "", rep, number, 0);
      const timeline = child(template, "SegmentTimeline");
      if (timeline) {
        let t = 0;
        for (const s of Array.from(timeline.children).filter((c) => c.localName === "S")) {
          if (s.hasAttribute("t")) t = Number(s.getAttribute("t"));
          const d = Number(s.getAttribute("d"));
          const repeat = Number(s.getAttribute("r") || 0);
          for (let i = 0; i <= repeat; i += 1) {
            rep.segments.push({ url: fill(media, rep, number, t), start: t / timescale, end: (t + d) / timescale });
            t += d; number += 1;
          }
        }
      } else {
        const d = Number(template.getAttribute("duration")) / timescale;
        for (let start = 0; start < duration - 1e-6; start += d) {
          rep.segments.push({ url: fill(media, rep, number, start * timescale), start, end: Math.min(duration, start + d) });
          number += 1;
        }
      }
      tracks[kind].push(rep);
    }
  }
  tracks.video.sort((a, b) => b.bandwidth - a.bandwidth);
  return { duration, tracks, protectedContent };
}

class Track {
  constructor(player, reps) {
    this.player = player;
    this.reps = reps;
    this.rep = reps[0];
    this.buffer = null;
    this.next = 0;
    this.needInit = true;
    this.busy = false;
  }

  type() { return `${this.rep.mime}; codecs="${this.rep.codecs}"`; }

  async append(bytes) {
    const sb = this.buffer;
    await new Promise((resolve, reject) => {
      const done = () => { sb.removeEventListener("updateend", done); sb.removeEventListener("error", fail); resolve(); };
      const fail = () => { sb.removeEventListener("updateend", done); sb.removeEventListener("error", fail); reject(new Error("append failed")); };
      sb.addEventListener("updateend", done);
      sb.addEventListener("error", fail);
      sb.appendBuffer(bytes);
    });
  }

  async fetch(name) {
    const answer = await outputFile(this.player.jobId, name, this.player.abort.signal);
    return new Uint8Array(await answer.arrayBuffer());
  }

  indexAt(time) {
    const i = this.rep.segments.findIndex((s) => time < s.end - 1e-3);
    return i < 0 ? this.rep.segments.length : i;
  }

  /** Append what the play position needs next (one segment per call). */
  async pump() {
    if (this.busy || !this.buffer) return;
    const video = this.player.video;
    const segments = this.rep.segments;
    if (this.next >= segments.length) return;
    if (segments[this.next].start > video.currentTime + AHEAD) return;
    this.busy = true;
    try {
      if (this.needInit) {
        await this.append(await this.fetch(this.rep.init));
        this.needInit = false;
      }
      const segment = segments[this.next];
      await this.append(await this.fetch(segment.url));
      this.next += 1;
    } finally {
      this.busy = false;
    }
  }

  /** Continue from `time` (a seek or a rendition switch). */
  async restart(time) {
    this.next = this.indexAt(time);
    while (this.busy) await new Promise((done) => setTimeout(done, 20));
    if (this.buffer && this.player.source.readyState === "open" && !this.buffer.updating) {
      this.buffer.abort();
    }
  }
}

export class Player {
  /** `video`: the <video id="preview">; `controls`: a container for the rendition menu and
   * the thumbnail strip. */
  constructor(jobId, video, controls) {
    this.jobId = jobId;
    this.video = video;
    this.controls = controls;
    this.abort = new AbortController();
    this.tracks = [];
    this.timer = null;
  }

  async load() {
    const manifest = await (await outputFile(this.jobId, "manifest.mpd", this.abort.signal)).text();
    const mpd = parseMpd(manifest);
    this.mpd = mpd;
    if (mpd.protectedContent) await this.clearKey(mpd);
    for (const kind of ["video", "audio"]) {
      const reps = mpd.tracks[kind].filter((r) => MediaSource.isTypeSupported(`${r.mime}; codecs="${r.codecs}"`));
      if (reps.length) this.tracks.push(new Track(this, reps));
    }
    if (!this.tracks.length) throw new Error("no rendition this browser can play");
    this.source = new MediaSource();
    this.video.src = URL.createObjectURL(this.source);
    await new Promise((done) => this.source.addEventListener("sourceopen", done, { once: true }));
    this.source.duration = mpd.duration;
    for (const track of this.tracks) track.buffer = this.source.addSourceBuffer(track.type());
    this.video.addEventListener("seeking", () => this.seeked());
    this.timer = setInterval(() => this.tick(), 200);
    this.renditionMenu();
    this.thumbnails().catch(() => {});
    this.tick();
  }

  async clearKey(mpd) {
    const reps = [...mpd.tracks.video, ...mpd.tracks.audio];
    const config = [{
      initDataTypes: ["cenc", "keyids"],
      videoCapabilities: mpd.tracks.video.slice(0, 1).map((r) => ({ contentType: `${r.mime}; codecs="${r.codecs}"` })),
      audioCapabilities: mpd.tracks.audio.slice(0, 1).map((r) => ({ contentType: `${r.mime}; codecs="${r.codecs}"` })),
    }];
    if (!reps.length) return;
    const access = await navigator.requestMediaKeySystemAccess("org.w3.clearkey", config);
    const keys = await access.createMediaKeys();
    await this.video.setMediaKeys(keys);
    const seen = new Set();
    this.video.addEventListener("encrypted", async (event) => {
      const id = btoa(String.fromCharCode(...new Uint8Array(event.initData)));
      if (seen.has(id)) return;
      seen.add(id);
      const session = keys.createSession();
      session.addEventListener("message", async (message) => {
        const request = JSON.parse(new TextDecoder().decode(message.message));
        const license = await api(`/Job/${encodeURIComponent(this.jobId)}/ClearKey`, { method: "POST", json: request });
        await session.update(new TextEncoder().encode(JSON.stringify(license)));
      });
      await session.generateRequest(event.initDataType, event.initData);
    });
  }

  async tick() {
    if (!this.source || this.source.readyState === "closed") return;
    try {
      await Promise.all(this.tracks.map((t) => t.pump()));
    } catch (error) {
      if (this.abort.signal.aborted) return;
      this.report(error);
      return;
    }
    const done = this.tracks.every((t) => t.next >= t.rep.segments.length && !t.busy && !t.buffer.updating);
    if (done && this.source.readyState === "open") this.source.endOfStream();
  }

  async seeked() {
    const time = this.video.currentTime;
    for (const track of this.tracks) {
      const buffered = track.buffer.buffered;
      let inside = false;
      for (let i = 0; i < buffered.length; i += 1) {
        if (time >= buffered.start(i) && time < buffered.end(i) - 0.1) inside = true;
      }
      if (!inside) await track.restart(time);
    }
    this.tick();
  }

  async choose(repId) {
    const video = this.tracks.find((t) => t.rep.kind === "video");
    if (!video) return;
    const rep = video.reps.find((r) => r.id === repId);
    if (!rep || rep === video.rep) return;
    const time = this.video.currentTime;
    await video.restart(time);
    video.rep = rep;
    video.needInit = true;
    this.tick();
  }

  renditionMenu() {
    const video = this.tracks.find((t) => t.rep.kind === "video");
    if (!video) return;
    const select = el("select", { id: "rendition", "aria-label": "Rendition" },
      video.reps.map((r) => el("option", { value: r.id }, `${r.height ? `${r.height}p` : r.id} · ${Math.round(r.bandwidth / 1000)} kbps`)));
    select.addEventListener("change", () => this.choose(select.value));
    this.controls.append(el("label", { class: "inline" }, "Rendition ", select));
  }

  async thumbnails() {
    let text;
    try {
      text = await (await outputFile(this.jobId, "thumbnails.vtt", this.abort.signal)).text();
    } catch { return; }
    const cues = [];
    const pattern = /([\d:.]+)\s+-->\s+([\d:.]+)\s*\n([^\n#]+)#xywh=(\d+),(\d+),(\d+),(\d+)/g;
    const time = (t) => t.split(":").reduce((sum, part) => sum * 60 + Number(part), 0);
    for (const m of text.matchAll(pattern)) {
      cues.push({ start: time(m[1]), file: m[3].trim(), x: +m[4], y: +m[5], w: +m[6], h: +m[7] });
    }
    const strip = el("div", { id: "thumbnails", class: "strip" });
    this.controls.append(strip);
    const tiles = new Map();
    for (const cue of cues) {
      if (!tiles.has(cue.file)) {
        const blob = await (await outputFile(this.jobId, cue.file, this.abort.signal)).blob();
        tiles.set(cue.file, await createImageBitmap(blob));
      }
      const canvas = el("canvas", { width: cue.w, height: cue.h, class: "thumb", title: `${cue.start.toFixed(1)} s`, "data-time": cue.start });
      canvas.getContext("2d").drawImage(tiles.get(cue.file), cue.x, cue.y, cue.w, cue.h, 0, 0, cue.w, cue.h);
      canvas.addEventListener("click", () => { this.video.currentTime = cue.start; });
      strip.append(canvas);
    }
  }

  report(error) {
    const box = this.controls.querySelector(".player-error") || this.controls.appendChild(el("p", { class: "error player-error" }));
    replace(box, `Preview: ${error.message || error}`);
  }

  destroy() {
    this.abort.abort();
    clearInterval(this.timer);
    if (this.video.src) URL.revokeObjectURL(this.video.src);
  }
}
