// mmva web page: upload (or drop) -> POST /jobs -> poll GET /jobs/{id} -> the HTML report of
// `mmva analyze -f html` in a frame, playing the uploaded file; quick sentences through
// POST /invocations; the recent jobs from GET /jobs. The timeline drawing below serves the Live tab.
// Plain JS with no libraries, so the page works offline and needs nothing from a CDN.
"use strict";

const EMOTIONS = ["anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"];
const COLORS = {
  anger: "#d62728", disgust: "#8c564b", fear: "#9467bd", joy: "#f2b701",
  neutral: "#8a94a6", sadness: "#1f77b4", surprise: "#17becf",
};
const SENTIMENT_COLORS = { negative: "#d62728", neutral: "#8a94a6", positive: "#2ca02c" };
const SVG_NS = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);
let currentJob = null;
let pollTimer = null;
let jobsTimer = null;
let authRequired = false;  // from /ping: without a key, /jobs would only answer 401 (an error in the console)
const videos = new Map();  // job id -> object URL of the file uploaded from this page (played in the report)

function apiHeaders(extra) {
  const headers = Object.assign({}, extra || {});
  const key = $("api-key").value.trim();
  if (key) { headers["X-API-Key"] = key; localStorage.setItem("mmva-api-key", key); }
  return headers;
}

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function errorText(response) {
  try { const body = await response.json(); return body.error || JSON.stringify(body); }
  catch (e) { return response.status + " " + response.statusText; }
}

function uploadJob(file) {
  // XMLHttpRequest rather than fetch: it reports upload progress.
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/jobs");
    const headers = apiHeaders({ "Content-Type": file.type || "application/octet-stream", "X-Filename": file.name });
    for (const [k, v] of Object.entries(headers)) xhr.setRequestHeader(k, v);
    xhr.upload.onprogress = (ev) => {
      if (ev.lengthComputable) showProgress("uploading", ev.loaded / ev.total);
    };
    xhr.onload = () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch (e) { /* not JSON */ }
      if (xhr.status === 202 && body) resolve(body);
      else reject(new Error((body && body.error) || ("upload failed: HTTP " + xhr.status)));
    };
    xhr.onerror = () => reject(new Error("upload failed: the server could not be reached"));
    xhr.send(file);
  });
}

function showProgress(stage, fraction) {
  $("progress-box").hidden = false;
  $("stage").textContent = stage;
  const pct = Math.round(Math.max(0, Math.min(1, fraction || 0)) * 100);
  $("progress").textContent = pct + "%";
  $("progress-fill").style.width = pct + "%";
}

async function poll() {
  if (!currentJob) return;
  const response = await fetch("/jobs/" + currentJob, { headers: apiHeaders() });
  if (!response.ok) { finish(); setStatus(await errorText(response), true); return; }
  const job = await response.json();
  showProgress(job.stage, job.progress);
  setStatus("job " + job.id.slice(0, 8) + ": " + job.state);
  if (job.state === "done") { finish(); await loadResult(job.id, job.source); }
  else if (job.state === "failed" || job.state === "cancelled") { finish(); setStatus(job.error || job.state, true); }
  else pollTimer = setTimeout(poll, 500);
}

function finish() {
  clearTimeout(pollTimer);
  refreshJobs();
  $("submit").disabled = false;
  $("cancel").hidden = true;
}

async function loadResult(jobId, source) {
  const response = await fetch("/jobs/" + jobId + "/result?format=html", { headers: apiHeaders() });
  if (!response.ok) { setStatus(await errorText(response), true); return; }
  await showReport(await response.text(), source || "", videos.get(jobId));
  $("downloads").hidden = false;
  for (const fmt of ["json", "html", "srt", "vtt", "csv"]) {
    $("download-" + fmt).onclick = (ev) => { ev.preventDefault(); download(jobId, fmt); };
  }
  const n = $("report-frame").contentDocument.querySelectorAll("tr.utt-row").length;
  setStatus("done: " + n + " utterance(s)");
  for (const tr of $("jobs").tBodies[0].rows) tr.classList.toggle("selected", tr.dataset.id === jobId);
}

// The report is the server's HTML report (the very file `mmva analyze -f html` writes), shown in a
// frame; a file uploaded from this page plays in its player (a local object URL, nothing re-downloaded).
function showReport(html, source, videoUrl) {
  const frame = $("report-frame");
  $("result").hidden = false;
  $("source").textContent = source ? "— " + source : "";
  return new Promise((resolve) => {
    frame.onload = () => {
      const report = frame.contentWindow.mmvaReport;
      if (videoUrl && report) report.setVideo(videoUrl);
      resolve();
    };
    frame.srcdoc = html;
  });
}

async function refreshJobs() {
  clearTimeout(jobsTimer);
  if (authRequired && !$("api-key").value.trim()) return;  // asked again once a key is typed
  let jobs = [];
  try {
    const response = await fetch("/jobs", { headers: apiHeaders() });
    if (!response.ok) return;  // no key yet, or not ready: the list stays as it was
    jobs = (await response.json()).jobs || [];
  } catch (e) { return; }
  const rows = jobs.slice(0, 20).map((job) => {
    const tr = document.createElement("tr");
    tr.dataset.id = job.id;
    tr.dataset.state = job.state;
    const pct = Math.round((job.progress || 0) * 100);
    const name = document.createElement("td");
    name.textContent = job.source;  // textContent: file names are untrusted
    const state = document.createElement("td");
    state.className = "job-state";
    state.textContent = job.state + (job.state === "running" ? " (" + job.stage + ")" : "");
    if (job.error) state.title = job.error;
    const progress = document.createElement("td");
    progress.className = "job-progress num";
    const bar = document.createElement("span");
    bar.className = "mini-bar";
    const fill = document.createElement("i");
    fill.style.width = pct + "%";
    bar.appendChild(fill);
    progress.append(bar, pct + "%");
    const when = document.createElement("td");
    when.className = "num";
    when.textContent = job.created_at ? new Date(job.created_at).toLocaleTimeString() : "";
    tr.append(name, state, progress, when);
    if (job.state === "done") tr.addEventListener("click", () => loadResult(job.id, job.source));
    if (job.id === currentJob) tr.classList.add("selected");
    return tr;
  });
  $("jobs").tBodies[0].replaceChildren(...rows);
  $("jobs-empty").hidden = rows.length > 0;
  const active = jobs.some((j) => j.state === "queued" || j.state === "running");
  jobsTimer = setTimeout(refreshJobs, active ? 1000 : 10000);
}

async function onText(ev) {
  ev.preventDefault();
  const lines = $("quick-text").value.split("\n").map((l) => l.trim()).filter((l) => l);
  if (!lines.length) { setStatus("type a sentence first", true); return; }
  $("text-submit").disabled = true;
  setStatus("analysing " + lines.length + " sentence(s)");
  try {
    const response = await fetch("/invocations", {
      method: "POST", body: JSON.stringify({ text: lines }),
      headers: apiHeaders({ "Content-Type": "application/json", "Accept": "text/html" }),
    });
    if (!response.ok) { setStatus(await errorText(response), true); return; }
    await showReport(await response.text(), "typed text", null);
    $("downloads").hidden = true;  // nothing stored on the server to download
    setStatus("done: " + lines.length + " sentence(s)");
  } catch (err) {
    setStatus(err.message, true);
  } finally {
    $("text-submit").disabled = false;
  }
}

function setupDrop() {
  const zone = $("drop-zone");
  for (const name of ["dragenter", "dragover"]) {
    zone.addEventListener(name, (ev) => { ev.preventDefault(); zone.classList.add("dragover"); });
  }
  for (const name of ["dragleave", "drop"]) {
    zone.addEventListener(name, (ev) => { ev.preventDefault(); zone.classList.remove("dragover"); });
  }
  zone.addEventListener("drop", (ev) => {
    const files = ev.dataTransfer && ev.dataTransfer.files;
    if (!files || !files.length) return;
    $("file").files = files;  // a drop starts the analysis, as a click on Analyze would
    $("upload-form").requestSubmit();
  });
  // A file dropped next to the zone must not make the browser leave the page to open it.
  window.addEventListener("dragover", (ev) => ev.preventDefault());
  window.addEventListener("drop", (ev) => ev.preventDefault());
}

async function download(jobId, fmt) {
  // fetch + blob so the API key header travels with the request (a plain link cannot send it).
  const response = await fetch("/jobs/" + jobId + "/result?format=" + fmt, { headers: apiHeaders() });
  if (!response.ok) { setStatus(await errorText(response), true); return; }
  const url = URL.createObjectURL(await response.blob());
  const a = document.createElement("a");
  a.href = url; a.download = "mmva-" + jobId.slice(0, 8) + "." + fmt;
  document.body.appendChild(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

function best(list) { return (list && list.length) ? list[0] : { label: "?", confidence: 0 }; }

function svg(tag, attrs, parent) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (parent) parent.appendChild(el);
  return el;
}

// `prefix` names the elements drawn into ("live-" for the Live tab); `result.view_start` (seconds)
// starts the time axis later, for the rolling live view.
function drawTimeline(result, prefix = "") {
  const utts = result.utterances || [];
  const ends = utts.map((u) => u.end_time || 0);
  const t0 = result.view_start || 0;
  const duration = Math.max(result.duration || 0, ...ends, t0 + 1);
  const W = 1000, left = 80, right = 10, lane = 22, topPad = 10;
  const plotW = W - left - right;
  const sentY = topPad + EMOTIONS.length * lane + 8;
  const H = sentY + lane + 28;
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", id: prefix + "timeline-svg" });
  const x = (t) => left + (Math.max(0, t - t0) / (duration - t0)) * plotW;
  EMOTIONS.forEach((emo, i) => {
    const y = topPad + i * lane;
    svg("rect", { x: left, y, width: plotW, height: lane - 2, fill: i % 2 ? "#fafbfc" : "#f1f4f8" }, root);
    const label = svg("text", { x: left - 6, y: y + lane / 2 + 4, "text-anchor": "end", "font-size": 12, fill: "#444" }, root);
    label.textContent = emo;
  });
  const sLabel = svg("text", { x: left - 6, y: sentY + lane / 2 + 4, "text-anchor": "end", "font-size": 12, fill: "#444" }, root);
  sLabel.textContent = "sentiment";
  utts.forEach((u, idx) => {
    const start = u.start_time || 0, end = Math.max(u.end_time || start, start + 0.05);
    const emo = best(u.emotions), sent = best(u.sentiments);
    const laneIdx = Math.max(0, EMOTIONS.indexOf(emo.label));
    const bar = svg("rect", {
      x: x(start), y: topPad + laneIdx * lane + 1, width: Math.max(2, x(end) - x(start)), height: lane - 4,
      fill: COLORS[emo.label] || "#555", "fill-opacity": 0.35 + 0.65 * (emo.confidence || 0),
      class: "utterance-bar", "data-index": idx,
    }, root);
    const tip = svg("title", {}, bar);
    tip.textContent = `${start.toFixed(1)}–${end.toFixed(1)} s  ${emo.label} ${(emo.confidence * 100).toFixed(0)}%: ${u.text || ""}`;
    svg("rect", { x: x(start), y: sentY + 1, width: Math.max(2, x(end) - x(start)), height: lane - 4,
                  fill: SENTIMENT_COLORS[sent.label] || "#555", "fill-opacity": 0.35 + 0.65 * (sent.confidence || 0) }, root);
  });
  const axisY = sentY + lane + 4;
  svg("line", { x1: left, x2: left + plotW, y1: axisY, y2: axisY, stroke: "#999" }, root);
  const step = niceStep((duration - t0) / 8);
  for (let t = Math.ceil(t0 / step) * step; t <= duration + 1e-9; t += step) {
    svg("line", { x1: x(t), x2: x(t), y1: axisY, y2: axisY + 4, stroke: "#999" }, root);
    const tick = svg("text", { x: x(t), y: axisY + 16, "text-anchor": "middle", "font-size": 11, fill: "#555" }, root);
    tick.textContent = formatTime(t);
  }
  $(prefix + "timeline").replaceChildren(root);
  $(prefix + "legend").replaceChildren(...EMOTIONS.map((emo) => {
    const span = document.createElement("span");
    const swatch = document.createElement("i");
    swatch.style.background = COLORS[emo];
    span.append(swatch, emo);
    return span;
  }));
}

function niceStep(raw) {
  const steps = [0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600];
  return steps.find((s) => s >= raw) || 3600;
}

function formatTime(t) {
  const m = Math.floor(t / 60), s = t - 60 * m;
  return m ? `${m}:${String(Math.round(s)).padStart(2, "0")}` : `${+s.toFixed(1)}s`;
}

function fillTable(result, tableId = "utterances") {
  const rows = (result.utterances || []).map((u) => {
    const tr = document.createElement("tr");
    const emo = best(u.emotions), sent = best(u.sentiments);
    const cells = [
      [(u.start_time ?? 0).toFixed(2), "num"], [(u.end_time ?? 0).toFixed(2), "num"], [u.text || "", ""],
      [`${emo.label} (${(emo.confidence * 100).toFixed(0)}%)`, ""],
      [`${sent.label} (${(sent.confidence * 100).toFixed(0)}%)`, ""], [(u.modalities || []).join(", "), ""],
    ];
    for (const [text, cls] of cells) {
      const td = document.createElement("td");
      td.textContent = text;  // textContent, never innerHTML: transcripts are untrusted
      if (cls) td.className = cls;
      tr.appendChild(td);
    }
    return tr;
  });
  $(tableId).tBodies[0].replaceChildren(...rows);
}

async function onSubmit(ev) {
  ev.preventDefault();
  const file = $("file").files[0];
  if (!file) { setStatus("choose a video or audio file first", true); return; }
  $("submit").disabled = true;
  $("result").hidden = true;
  setStatus("uploading " + file.name);
  try {
    const job = await uploadJob(file);
    currentJob = job.id;
    videos.set(job.id, URL.createObjectURL(file));
    $("source").textContent = "— " + file.name;
    refreshJobs();
    $("cancel").hidden = false;
    showProgress(job.stage, job.progress);
    poll();
  } catch (err) {
    finish();
    setStatus(err.message, true);
  }
}

async function onCancel() {
  if (!currentJob) return;
  const response = await fetch("/jobs/" + currentJob + "/cancel", { method: "POST", headers: apiHeaders() });
  if (!response.ok) setStatus(await errorText(response), true);
}

function showTab(live) {
  $("file-view").hidden = live;
  $("live-view").hidden = !live;
  $("tab-file").setAttribute("aria-selected", String(!live));
  $("tab-live").setAttribute("aria-selected", String(live));
}

async function init() {
  $("tab-file").addEventListener("click", () => showTab(false));
  $("tab-live").addEventListener("click", () => showTab(true));
  $("upload-form").addEventListener("submit", onSubmit);
  $("text-form").addEventListener("submit", onText);
  $("api-key").addEventListener("change", refreshJobs);
  setupDrop();
  $("cancel").addEventListener("click", onCancel);
  $("api-key").value = localStorage.getItem("mmva-api-key") || "";
  try {
    const ping = await (await fetch("/ping")).json();  // open; /info needs the key like the rest of the API
    $("key-row").hidden = !ping.auth_required;
    authRequired = !!ping.auth_required;
    if (ping.error) setStatus(ping.error, !ping.error.includes("loading"));
  } catch (e) { setStatus("the server could not be reached", true); }
  refreshJobs();
}

init();
