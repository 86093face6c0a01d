// The vipe console: sign-in, jobs list, job page, submit. Hash routes (#/jobs, #/job/<id>,
// #/new); live updates through the SSE streams; every job string put in as text.

import { api, ApiError, authorization, authorizationFor, setAuthorization } from "./api.js";
import { rateQualityChart } from "./chart.js";
import { el, fmtBytes, fmtDuration, fmtTime, replace } from "./dom.js";
import { Player } from "./player.js";
import { openStream } from "./sse.js";

const STATES = ["Queued", "Running", "Succeeded", "Failed", "Cancelled"];
const FINAL = new Set(["Succeeded", "Failed", "Cancelled"]);
const main = document.getElementById("main");
let cleanup = [];

function leave() {
  for (const undo of cleanup) undo();
  cleanup = [];
}

function route() {
  leave();
  const nav = document.getElementById("nav");
  if (!authorization()) {
    nav.hidden = true;
    signInView();
    return;
  }
  nav.hidden = false;
  const hash = location.hash || "#/jobs";
  const job = /^#\/job\/([\w-]+)$/.exec(hash);
  if (job) jobView(job[1]);
  else if (hash === "#/new") submitView();
  else jobsView();
}

function failure(error) {
  if (error instanceof ApiError && error.status === 401) {
    setAuthorization(null);
    route();
    return;
  }
  main.append(el("p", { class: "error", role: "alert" }, error.message || String(error)));
}

// ------------------------------------------------------------------------------ sign-in

function signInView() {
  const key = el("input", { id: "key", type: "password", autocomplete: "off", required: true,
    placeholder: "Tenant-Auth key or JWT" });
  const message = el("p", { class: "error", role: "alert", id: "sign-in-error" });
  const form = el("form", { class: "card narrow", id: "sign-in-form" },
    el("h1", {}, "Sign in"),
    el("label", { for: "key" }, "Management key (Tenant-Auth) or bearer token (JWT)"),
    key,
    el("button", { id: "sign-in", type: "submit" }, "Sign in"),
    message,
    el("p", { class: "muted" }, "Kept in this browser tab only (sessionStorage)."));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const candidate = authorizationFor(key.value);
    try {
      await api("/Job?Limit=1", { auth: candidate });
    } catch (error) {
      replace(message, error.message);
      return;
    }
    setAuthorization(candidate);
    if (!location.hash || location.hash === "#/") location.hash = "#/jobs";
    route();
  });
  replace(main, form);
  key.focus();
}

// ---------------------------------------------------------------------------------- jobs

function progressBar(value) {
  return el("progress", { max: 100, value: Number(value) || 0, "aria-label": "progress" }, `${value || 0} %`);
}

function jobRow(job) {
  const row = el("tr", { "data-job-id": job.JobId });
  fillRow(row, job);
  return row;
}

function fillRow(row, job) {
  row.dataset.created = job.CreatedTime || "";
  replace(row,
    el("td", { class: "ext" }, el("a", { href: `#/job/${job.JobId}` }, job.ExternalId || job.JobId)),
    el("td", { class: "state", "data-state": job.State }, job.State),
    el("td", { class: "phase" }, job.Phase || ""),
    el("td", { class: "progress" }, progressBar(job.Progress)),
    el("td", { class: "wide encoder" }, job.Encoder || ""),
    el("td", { class: "wide created" }, fmtTime(job.CreatedTime)),
    el("td", { class: "wide duration", "data-start": job.StartTime || "", "data-end": job.FinishedTime || "" },
      fmtDuration(job.StartTime, job.FinishedTime)),
  );
  row.jobState = job;
}

async function jobsView() {
  const filter = el("select", { id: "state-filter", "aria-label": "State" },
    el("option", { value: "" }, "All states"), STATES.map((s) => el("option", { value: s }, s)));
  const wanted = new URLSearchParams(location.hash.split("?")[1] || "").get("state") || "";
  filter.value = wanted;
  const status = el("span", { class: "muted", id: "live" }, "");
  const body = el("tbody", { id: "jobs" });
  const table = el("div", { class: "scroll" }, el("table", { class: "jobs" },
    el("thead", {}, el("tr", {},
      el("th", {}, "External id"), el("th", {}, "State"), el("th", {}, "Phase"),
      el("th", {}, "Progress"), el("th", { class: "wide" }, "Encoder"),
      el("th", { class: "wide" }, "Created"), el("th", { class: "wide" }, "Duration"))),
    body));
  replace(main,
    el("div", { class: "heading" }, el("h1", {}, "Jobs"),
      el("div", { class: "tools" }, filter, el("a", { class: "button", href: "#/new" }, "New job"), status)),
    table);
  filter.addEventListener("change", () => { location.hash = filter.value ? `#/jobs?state=${filter.value}` : "#/jobs"; });
  let jobs;
  try {
    jobs = (await api(`/Job${filter.value ? `?State=${filter.value}` : ""}`)).Jobs;
  } catch (error) { failure(error); return; }
  const rows = new Map();
  for (const job of jobs) {
    const row = jobRow(job);
    rows.set(job.JobId, row);
    body.append(row);
  }
  if (!jobs.length) body.append(el("tr", { class: "empty" }, el("td", { colspan: 7 }, "No jobs yet.")));
  const stream = openStream("/events", {
    onStatus: (text) => replace(status, text),
    onJob: (job) => {
      if (filter.value && job.State !== filter.value) {
        const gone = rows.get(job.JobId);
        if (gone) { gone.remove(); rows.delete(job.JobId); }
        return;
      }
      const row = rows.get(job.JobId);
      if (row) { fillRow(row, job); return; }
      const fresh = jobRow(job);
      rows.set(job.JobId, fresh);
      const empty = body.querySelector("tr.empty");
      if (empty) empty.remove();
      const after = Array.from(body.children).find((r) => (r.dataset.created || "") < (job.CreatedTime || ""));
      body.insertBefore(fresh, after || null);
    },
  });
  const clock = setInterval(() => {
    for (const cell of body.querySelectorAll("td.duration")) {
      if (cell.dataset.start && !cell.dataset.end) replace(cell, fmtDuration(cell.dataset.start, null));
    }
  }, 1000);
  cleanup.push(() => stream.close(), () => clearInterval(clock));
}

// ------------------------------------------------------------------------------ job page

function eventItem(event) {
  const kind = event.MessageType || "";
  const classes = ["event", kind === "FinalError" ? "failed" : kind === "Warning" ? "warning" : ""].join(" ");
  const details = [];
  if (event.Phase) details.push(event.Phase);
  if (typeof event.Progress === "number") details.push(`${event.Progress} %`);
  const code = event.ErrorCode ?? event.WarningCode ?? event.Code;
  const text = event.ErrorMessage ?? event.WarningMessage ?? event.Message;
  return el("li", { class: classes, "data-type": kind },
    el("time", {}, fmtTime(event.TimeStamp || event.Timestamp || event.CreatedTime)),
    el("strong", {}, kind),
    details.length ? el("span", { class: "muted" }, ` ${details.join(" · ")}`) : null,
    code !== undefined && code !== null ? el("span", { class: "code" }, ` ${code}`) : null,
    text ? el("div", { class: "message" }, String(text)) : null);
}

function streamsTable(streams) {
  if (!streams || !streams.length) return el("p", { class: "muted" }, "No streams yet.");
  const num = (v, d) => (typeof v === "number" ? v.toFixed(d) : "");
  return el("div", { class: "scroll" }, el("table", { id: "streams" },
    el("thead", {}, el("tr", {}, ["Rendition", "Size", "Declared kbps", "Measured kbps", "Encoder",
      "PSNR", "SSIM", "VMAF"].map((h) => el("th", {}, h)))),
    el("tbody", {}, streams.map((s) => el("tr", {},
      el("td", {}, s.Name || s.Label || ""),
      el("td", {}, s.Width ? `${s.Width}×${s.Height}` : s.Language || ""),
      el("td", {}, s.DeclaredBitrateInKbps ?? s.BitrateInKbps ?? ""),
      el("td", {}, num(s.EncodedBitrateInKbps ?? s.MeasuredBitrateInKbps, 1)),
      el("td", {}, s.Encoder || ""),
      el("td", {}, num(s.Psnr, 2)), el("td", {}, num(s.Ssim, 4)), el("td", {}, num(s.Vmaf, 2)))))));
}

function detailList(view) {
  const keyIds = view.KeyIds || (view.KeyId ? [view.KeyId] : []);
  const entries = [
    ["Job id", view.JobId], ["External type", view.ExternalType],
    ["External provider", view.ExternalProvider], ["Encoder", view.Encoder || ""],
    ["Created", fmtTime(view.CreatedTime)], ["Started", fmtTime(view.StartTime)],
    ["Finished", fmtTime(view.FinishedTime)], ["Attempts", view.Attempts],
    ["Key ids", keyIds.length ? keyIds.join(", ") : "none"],
  ];
  return el("dl", { class: "details" }, entries.map(([k, v]) => [el("dt", {}, k), el("dd", {}, v ?? "")]));
}

async function jobView(jobId) {
  let view;
  try {
    view = await api(`/Job/${encodeURIComponent(jobId)}`);
  } catch (error) {
    replace(main, el("h1", {}, "Job"));
    failure(error);
    return;
  }
  const state = el("span", { id: "job-state", class: "badge", "data-state": view.State }, view.State);
  const phase = el("span", { id: "job-phase", class: "muted" }, view.Phase || "");
  const bar = progressBar(view.Progress);
  bar.id = "job-progress";
  const cancel = el("button", { id: "cancel", type: "button", class: "danger" }, "Cancel job");
  const error = el("p", { id: "job-error", class: "error", role: "alert" },
    view.ErrorCode ? `${view.ErrorCode}: ${view.ErrorMessage || ""}` : "");
  const timeline = el("ol", { id: "timeline", class: "timeline" }, view.Events.map(eventItem));
  const streamsBox = el("section", { id: "streams-section" });
  const chartBox = el("section", { id: "chart-section" });
  const reportBox = el("pre", { id: "report", class: "report" });
  const previewBox = el("section", { id: "preview-section" });
  const detailsBox = el("section", {}, el("h2", {}, "Details"), detailList(view));
  let eventCount = view.Events.length;

  replace(main,
    el("p", {}, el("a", { href: "#/jobs" }, "← Jobs")),
    el("div", { class: "heading" }, el("h1", { id: "job-title" }, view.ExternalId || view.JobId),
      el("div", { class: "tools" }, state, phase, bar, cancel)),
    error,
    el("div", { class: "columns" },
      detailsBox,
      el("section", {}, el("h2", {}, "Timeline"), timeline)),
    el("h2", {}, "Preview"), previewBox,
    el("h2", {}, "Streams"), streamsBox,
    el("h2", {}, "Rate and quality"), chartBox,
    el("h2", {}, "Report"), reportBox);

  function outputs(current) {
    replace(streamsBox, streamsTable(current.Outputs.Streams));
    replace(chartBox, rateQualityChart(current.Outputs.Streams));
    cancel.disabled = FINAL.has(current.State);
  }
  outputs(view);

  async function finished() {
    try {
      view = await api(`/Job/${encodeURIComponent(jobId)}`);
    } catch (err) { failure(err); return; }
    outputs(view);
    replace(detailsBox, el("h2", {}, "Details"), detailList(view));
    replace(error, view.ErrorCode ? `${view.ErrorCode}: ${view.ErrorMessage || ""}` : "");
    try {
      replace(reportBox, JSON.stringify(await api(`/reporting/${encodeURIComponent(jobId)}`), null, 2));
    } catch { replace(reportBox, ""); }
    preview(view);
  }

  let player = null;
  function preview(current) {
    if (player) return;
    const job = current.Job || {};
    const manifests = current.Outputs.Manifests || [];
    if (current.State !== "Succeeded") {
      replace(previewBox, el("p", { class: "muted" }, "The preview opens when the job has succeeded."));
      return;
    }
    if (job.ContentPublishingProvider !== "Local" || !manifests.some((m) => String(m).endsWith(".mpd"))) {
      replace(previewBox, el("p", {}, "Published to ", String(current.Outputs.Location || job.ContentPublishingUriPath || "")),
        el("ul", { id: "manifests" }, manifests.map((m) => el("li", {}, String(m)))));
      return;
    }
    const video = el("video", { id: "preview", controls: true, muted: true, playsinline: true });
    const controls = el("div", { class: "player-controls" });
    replace(previewBox, el("div", { class: "player" }, video), controls);
    player = new Player(jobId, video, controls);
    cleanup.push(() => player.destroy());
    player.load().catch((err) => player.report(err));
  }

  cancel.addEventListener("click", async () => {
    if (!window.confirm(`Cancel job ${view.ExternalId || jobId}?`)) return;
    try {
      await api(`/Job/${encodeURIComponent(jobId)}/Cancel`, { method: "POST" });
    } catch (err) { replace(error, err.message); }
  });

  if (FINAL.has(view.State)) {
    finished();
    return;
  }
  preview(view);
  const stream = openStream(`/Job/${encodeURIComponent(jobId)}/events`, {
    onEvent: (event) => {
      eventCount += 1;
      if (eventCount > view.Events.length) timeline.append(eventItem(event));
    },
    onJob: (job) => {
      state.dataset.state = job.State;
      replace(state, job.State);
      replace(phase, job.Phase || "");
      bar.value = Number(job.Progress) || 0;
      cancel.disabled = FINAL.has(job.State);
    },
    onEnd: () => finished(),
  });
  cleanup.push(() => stream.close());
}

// -------------------------------------------------------------------------------- submit

function submitView() {
  const text = el("textarea", { id: "job-json", rows: 18, spellcheck: "false",
    placeholder: "{\n  \"ExternalId\": \"…\",\n  …\n}" });
  const file = el("input", { type: "file", id: "job-file", accept: "application/json,.json" });
  const validate = el("button", { type: "button", id: "validate" }, "Validate");
  const submit = el("button", { type: "submit", id: "submit" }, "Submit");
  const problems = el("ul", { id: "problems", class: "problems" });
  const note = el("p", { id: "submit-status", role: "status", class: "muted" });
  const form = el("form", { class: "submit" },
    el("h1", {}, "New job"),
    el("div", { class: "columns" },
      el("div", {}, el("label", { for: "job-json" }, "Job JSON"), text,
        el("label", { class: "inline" }, "or upload ", file)),
      el("div", {}, el("h2", {}, "Problems"), note, problems)),
    el("div", { class: "tools" }, validate, submit));
  replace(main, form);

  file.addEventListener("change", async () => {
    if (file.files.length) text.value = await file.files[0].text();
  });

  function show(result) {
    replace(problems, (result.Errors || []).map((e) => el("li", { class: "error", "data-field": e.Field },
      el("code", {}, e.Field), ` ${e.Message}`)),
    (result.Warnings || []).map((w) => el("li", { class: "warning", "data-field": w.Field },
      el("code", {}, w.Field), ` ${w.Message}`)));
  }

  async function check() {
    let document;
    try {
      document = JSON.parse(text.value);
    } catch (error) {
      show({ Errors: [{ Field: "$", Message: `not valid JSON: ${error.message}` }] });
      replace(note, "Not valid JSON.");
      return null;
    }
    let result;
    try {
      result = await api("/Job/Validate", { method: "POST", json: document });
    } catch (error) {
      show({ Errors: error.errors.length ? error.errors : [{ Field: "$", Message: error.message }] });
      replace(note, error.message);
      return null;
    }
    show(result);
    replace(note, result.Valid ? "Valid." : `${result.Errors.length} problem(s).`);
    return result.Valid ? document : null;
  }

  validate.addEventListener("click", () => { check(); });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const document = await check();
    if (!document) return;
    try {
      const answer = await api("/Job", { method: "POST", json: document });
      location.hash = `#/job/${answer.JobId}`;
    } catch (error) {
      show({ Errors: error.errors.length ? error.errors : [{ Field: "$", Message: error.message }] });
      replace(note, error.message);
    }
  });
}

// --------------------------------------------------------------------------------- start

document.getElementById("sign-out").addEventListener("click", () => {
  setAuthorization(null);
  location.hash = "";
  route();
});
window.addEventListener("hashchange", route);
route();
