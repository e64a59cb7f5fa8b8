// Live tab: microphone (+ camera) -> WS /stream -> a rolling timeline of finished utterances.
// Protocol in docs/serve.md: JSON "start", binary 16-bit PCM, {"type": "frame"} + JPEG, "stop".
"use strict";

const LIVE_WINDOW_S = 60;  // the rolling timeline shows the last minute
const live = { ws: null, sending: false, ctx: null, stream: null, frameTimer: null, samples: 0, rate: 16000,
               utterances: [], model: {}, duration: 0, started: null };

function liveStatus(text, isError) {
  $("live-status").textContent = text;
  $("live-status").className = isError ? "error" : "";
}

function liveResult() {
  return { schema_version: "1.0", source: "live", segmentation: "live", started_at: live.started,
           duration: live.duration, utterances: live.utterances, model: live.model };
}

function liveRender() {
  const result = liveResult();
  const end = Math.max(live.samples / live.rate, ...live.utterances.map((u) => u.end_time || 0), 1);
  const start = Math.max(0, end - LIVE_WINDOW_S);
  drawTimeline({ utterances: live.utterances.filter((u) => (u.end_time || 0) >= start), duration: end,
                 view_start: start }, "live-");
  fillTable(result, "live-utterances");
  const counts = {};
  for (const u of live.utterances) { const e = best(u.emotions).label; counts[e] = (counts[e] || 0) + 1; }
  const top = Object.keys(counts).sort((a, b) => counts[b] - counts[a])[0];
  $("live-summary").textContent = `${live.utterances.length} utterance(s), ${end.toFixed(1)} s` +
    (top ? `, most frequent emotion: ${top}` : "");
}

function onLiveMessage(event) {
  const msg = JSON.parse(event.data);
  if (msg.type === "ready") {
    live.model = msg.model || {};
    liveStatus("listening: speak, and pause between sentences");
  } else if (msg.type === "partial") {
    $("live-partial").textContent = msg.text;
  } else if (msg.type === "utterance") {
    live.utterances.push(msg.utterance);
    $("live-partial").textContent = "";
    liveRender();
  } else if (msg.type === "done") {
    live.duration = msg.duration;
    liveStatus(`stopped: ${live.utterances.length} utterance(s) in ${msg.duration.toFixed(1)} s` +
               (msg.reason !== "stop" ? ` (${msg.reason})` : ""));
  } else if (msg.type === "error") {
    liveStatus(msg.error, true);
  }
}

async function startCapture(useCamera) {
  live.stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, echoCancellation: true },
                                                            video: useCamera ? { width: 640 } : false });
  try { live.ctx = new AudioContext({ sampleRate: 16000 }); }
  catch (e) { live.ctx = new AudioContext(); }  // the server resamples other rates
  live.rate = live.ctx.sampleRate;
  if (live.ctx.state === "suspended") await live.ctx.resume();
  await live.ctx.audioWorklet.addModule("/static/live-worklet.js");
  const source = live.ctx.createMediaStreamSource(live.stream);
  const node = new AudioWorkletNode(live.ctx, "pcm-capture");
  node.port.onmessage = (ev) => {
    if (live.sending && live.ws && live.ws.readyState === WebSocket.OPEN) {
      live.ws.send(ev.data);
      live.samples += ev.data.byteLength / 2;
    }
  };
  source.connect(node);
  if (useCamera && live.stream.getVideoTracks().length) startFrames();
}

function startFrames() {
  const video = $("live-video");
  video.srcObject = live.stream;
  video.play();
  const canvas = document.createElement("canvas");
  live.frameTimer = setInterval(() => {
    if (!video.videoWidth || !live.sending || !live.ws || live.ws.readyState !== WebSocket.OPEN) return;
    const scale = Math.min(1, 320 / Math.max(video.videoWidth, video.videoHeight));
    canvas.width = Math.round(video.videoWidth * scale);
    canvas.height = Math.round(video.videoHeight * scale);
    canvas.getContext("2d").drawImage(video, 0, 0, canvas.width, canvas.height);
    const time = live.samples / live.rate;
    canvas.toBlob(async (blob) => {
      if (!blob || !live.ws || live.ws.readyState !== WebSocket.OPEN) return;
      const bytes = await blob.arrayBuffer();
      // The announcement and its JPEG go out back to back: nothing can come between them.
      live.ws.send(JSON.stringify({ type: "frame", time }));
      live.ws.send(bytes);
    }, "image/jpeg", 0.8);
  }, 500);
}

function stopCapture() {
  clearInterval(live.frameTimer);
  live.frameTimer = null;
  if (live.stream) live.stream.getTracks().forEach((t) => t.stop());
  if (live.ctx) live.ctx.close();
  live.stream = live.ctx = null;
  live.sending = false;
}

async function onLiveStart() {
  $("live-start").disabled = true;
  $("live-download").hidden = true;
  Object.assign(live, { utterances: [], samples: 0, duration: 0, started: new Date().toISOString() });
  liveRender();
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  const ws = new WebSocket(scheme + location.host + "/stream");
  ws.binaryType = "arraybuffer";
  live.ws = ws;
  ws.onmessage = onLiveMessage;
  ws.onclose = (ev) => {
    stopCapture();
    live.ws = null;
    if (!live.duration) live.duration = live.samples / live.rate;
    $("live-start").disabled = false;
    $("live-stop").disabled = true;
    $("live-download").hidden = false;
    if (ev.code !== 1000 && !$("live-status").className) liveStatus("the connection closed (" + ev.code + ")", true);
  };
  ws.onopen = async () => {
    try {
      await startCapture($("live-camera").checked);
    } catch (err) {
      liveStatus("no microphone: " + err.message, true);
      ws.close();
      return;
    }
    // Browsers cannot send headers on a WebSocket: the key goes in the first message.
    const key = $("api-key").value.trim();
    ws.send(JSON.stringify({ type: "start", sample_rate: live.rate, api_key: key || undefined }));
    live.sending = true;  // audio only after "start"
    $("live-stop").disabled = false;
    liveStatus("connecting…");
  };
}

function onLiveStop() {
  $("live-stop").disabled = true;
  stopCapture();  // no more audio; the server finishes the open utterance, then says "done" and closes
  if (live.ws && live.ws.readyState === WebSocket.OPEN) live.ws.send(JSON.stringify({ type: "stop" }));
  liveStatus("finishing the last utterance…");
}

function onLiveDownload(ev) {
  ev.preventDefault();
  const url = URL.createObjectURL(new Blob([JSON.stringify(liveResult(), null, 2)], { type: "application/json" }));
  const a = document.createElement("a");
  a.href = url; a.download = "mmva-live-" + (live.started || "").replace(/[:.]/g, "-") + ".json";
  document.body.appendChild(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

$("live-start").addEventListener("click", onLiveStart);
$("live-stop").addEventListener("click", onLiveStop);
$("live-download").addEventListener("click", onLiveDownload);
