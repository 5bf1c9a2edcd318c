// The playground: one page, no dependencies, talks only to the server that served it.
"use strict";

// Whisper's languages by their English names (decoding/languages.py), in its own order.
const LANGUAGE_NAMES = {
  en: "English", zh: "Chinese", de: "German", es: "Spanish", ru: "Russian", ko: "Korean", fr: "French",
  ja: "Japanese", pt: "Portuguese", tr: "Turkish", pl: "Polish", ca: "Catalan", nl: "Dutch", ar: "Arabic",
  sv: "Swedish", it: "Italian", id: "Indonesian", hi: "Hindi", fi: "Finnish", vi: "Vietnamese", he: "Hebrew",
  uk: "Ukrainian", el: "Greek", ms: "Malay", cs: "Czech", ro: "Romanian", da: "Danish", hu: "Hungarian",
  ta: "Tamil", no: "Norwegian", th: "Thai", ur: "Urdu", hr: "Croatian", bg: "Bulgarian", lt: "Lithuanian",
  la: "Latin", mi: "Maori", ml: "Malayalam", cy: "Welsh", sk: "Slovak", te: "Telugu", fa: "Persian", lv: "Latvian",
  bn: "Bengali", sr: "Serbian", az: "Azerbaijani", sl: "Slovenian", kn: "Kannada", et: "Estonian",
  mk: "Macedonian", br: "Breton", eu: "Basque", is: "Icelandic", hy: "Armenian", ne: "Nepali", mn: "Mongolian",
  bs: "Bosnian", kk: "Kazakh", sq: "Albanian", sw: "Swahili", gl: "Galician", mr: "Marathi", pa: "Punjabi",
  si: "Sinhala", km: "Khmer", sn: "Shona", yo: "Yoruba", so: "Somali", af: "Afrikaans", oc: "Occitan",
  ka: "Georgian", be: "Belarusian", tg: "Tajik", sd: "Sindhi", gu: "Gujarati", am: "Amharic", yi: "Yiddish",
  lo: "Lao", uz: "Uzbek", fo: "Faroese", ht: "Haitian Creole", ps: "Pashto", tk: "Turkmen", nn: "Nynorsk",
  mt: "Maltese", sa: "Sanskrit", lb: "Luxembourgish", my: "Myanmar", bo: "Tibetan", tl: "Tagalog", mg: "Malagasy",
  as: "Assamese", tt: "Tatar", haw: "Hawaiian", ln: "Lingala", ha: "Hausa", ba: "Bashkir", jw: "Javanese",
  su: "Sundanese", yue: "Cantonese"
};

const $ = (id) => document.getElementById(id);
const state = { audio: null, name: "", segments: [], text: "", language: null, duration: null, controller: null };

// ---- timestamps and renderers: the same output as the API's srt and vtt ----
function stamp(ms, decimal) {
  ms = Math.max(0, Math.round(ms));
  const pad = (n, w) => String(n).padStart(w, "0");
  const h = Math.floor(ms / 3600000), m = Math.floor(ms / 60000) % 60, s = Math.floor(ms / 1000) % 60;
  return `${pad(h, 2)}:${pad(m, 2)}:${pad(s, 2)}${decimal}${pad(ms % 1000, 3)}`;
}
function renderSrt(segments) {
  const blocks = segments.map((s, i) => `${i + 1}\n${stamp(s.start_ms, ",")} --> ${stamp(s.end_ms, ",")}\n${s.text.trim()}\n`);
  return blocks.join("\n") + (blocks.length ? "\n" : "");
}
function renderVtt(segments) {
  const blocks = ["WEBVTT\n", ...segments.map((s) => `${stamp(s.start_ms, ".")} --> ${stamp(s.end_ms, ".")}\n${s.text.trim()}\n`)];
  return blocks.join("\n") + "\n";
}
function clock(ms) {
  const s = ms / 1000, m = Math.floor(s / 60);
  return `${m}:${(s - m * 60).toFixed(1).padStart(4, "0")}`;
}

// ---- page state ----
function setState(name, message) {
  document.body.dataset.state = name;
  $("status").textContent = message || "";
  const busy = name === "uploading" || name === "streaming";
  $("submit").disabled = busy || !state.audio;
  $("cancel").hidden = !busy;
}
function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}
function resetOutput() {
  state.segments = []; state.text = ""; state.language = null; state.duration = null;
  $("live").textContent = ""; $("segments").replaceChildren(); $("raw").textContent = "";
  showError("");
  for (const id of ["download-srt", "download-vtt", "download-json"]) $(id).disabled = true;
}
function addSegment(segment) {
  state.segments.push(segment);
  const item = document.createElement("li");
  const button = document.createElement("button");
  button.type = "button";
  button.title = "play from here";
  const time = document.createElement("time");
  time.textContent = `${clock(segment.start_ms)} → ${clock(segment.end_ms)}`;
  const text = document.createElement("span");
  text.textContent = segment.text.trim();
  button.append(time, text);
  button.addEventListener("click", () => {
    const player = $("player");
    player.currentTime = segment.start_ms / 1000;
    player.play().catch(() => {});
  });
  item.append(button);
  $("segments").append(item);
}
function finish(text) {
  state.text = text;
  $("live").textContent = text;
  const timed = state.segments.length > 0;
  $("download-srt").disabled = !timed;
  $("download-vtt").disabled = !timed;
  $("download-json").disabled = false;
}

// ---- input: file picker, drag and drop, microphone ----
function useAudio(blob, name) {
  state.audio = blob; state.name = name;
  $("picked").textContent = `${name} (${(blob.size / 1024).toFixed(0)} KiB)`;
  const player = $("player");
  if (player.src) URL.revokeObjectURL(player.src);
  player.src = URL.createObjectURL(blob);
  setState("idle");
}
$("file").addEventListener("change", (e) => { const f = e.target.files[0]; if (f) useAudio(f, f.name); });
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault(); drop.classList.remove("over");
  const f = e.dataTransfer.files[0];
  if (f) useAudio(f, f.name);
});

let recorder = null;
$("record").addEventListener("click", async () => {
  if (recorder) { recorder.stop(); return; }
  if (!navigator.mediaDevices || !window.MediaRecorder) { showError("This browser cannot record audio here."); return; }
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    const chunks = [];
    recorder = new MediaRecorder(stream);
    recorder.ondataavailable = (e) => chunks.push(e.data);
    recorder.onstop = () => {
      stream.getTracks().forEach((t) => t.stop());
      const type = recorder.mimeType || "audio/webm";
      useAudio(new Blob(chunks, { type }), `recording.${type.includes("ogg") ? "ogg" : "webm"}`);
      recorder = null;
      $("record").textContent = "● Record"; $("record").classList.remove("recording");
    };
    recorder.start();
    $("record").textContent = "■ Stop"; $("record").classList.add("recording");
  } catch (err) {
    showError(`Microphone unavailable: ${err.message}`);
  }
});

// ---- live: the microphone over WebSocket (/v1/realtime, OpenAI's transcription session events) ----
const LIVE_RATE = 24000; // pcm16 at 24 kHz, as OpenAI's Realtime API takes it
const live = { socket: null, context: null, stream: null, node: null };
function pcm16Base64(floats) {
  const bytes = new Uint8Array(floats.length * 2);
  const view = new DataView(bytes.buffer);
  floats.forEach((x, i) => view.setInt16(i * 2, Math.max(-1, Math.min(1, x)) * 0x7fff, true));
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(binary);
}
function stopLive(message) {
  if (live.node) live.node.disconnect();
  if (live.stream) live.stream.getTracks().forEach((t) => t.stop());
  if (live.context) live.context.close().catch(() => {});
  if (live.socket && live.socket.readyState <= 1) live.socket.close();
  Object.assign(live, { socket: null, context: null, stream: null, node: null });
  $("live-button").textContent = "◉ Live"; $("live-button").classList.remove("recording");
  setState(message ? "failed" : "done", message ? "" : "live session ended");
  if (message) showError(message);
}
function addTurn(text) {
  const item = document.createElement("li");
  item.textContent = text;
  $("turns").append(item);
}
async function startLive() {
  if (!navigator.mediaDevices || !window.WebSocket) { showError("This browser cannot stream audio here."); return; }
  resetOutput(); $("turns").replaceChildren();
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/v1/realtime?intent=transcription`;
  // Browsers cannot set headers on a WebSocket: the key travels as a subprotocol, as OpenAI's browser clients send it.
  const protocols = ["realtime", ...($("key").value ? [`openai-insecure-api-key.${$("key").value}`] : [])];
  try {
    live.stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1 } });
  } catch (err) { showError(`Microphone unavailable: ${err.message}`); return; }
  live.socket = new WebSocket(url, protocols);
  live.socket.onerror = () => stopLive("The live connection failed (wrong API key, or the server is busy).");
  live.socket.onmessage = (message) => {
    const e = JSON.parse(message.data);
    if (e.type === "conversation.item.input_audio_transcription.delta") $("live").textContent += e.delta;
    else if (e.type === "conversation.item.input_audio_transcription.completed") {
      if (e.transcript) addTurn(e.transcript);
      $("live").textContent = "";
      state.text = [...$("turns").children].map((li) => li.textContent).join(" ");
    } else if (e.type === "input_audio_buffer.speech_started") setState("streaming", "listening: speech");
    else if (e.type === "input_audio_buffer.speech_stopped") setState("streaming", "listening");
    else if (e.type === "error") showError(e.error.message);
  };
  live.socket.onopen = () => {
    const language = $("language").value || null;
    live.socket.send(JSON.stringify({ type: "session.update", session: { type: "transcription", audio: { input: {
      format: { type: "audio/pcm", rate: LIVE_RATE }, transcription: { model: "whisper-1", language } } } } }));
    live.context = new AudioContext({ sampleRate: LIVE_RATE });
    const source = live.context.createMediaStreamSource(live.stream);
    live.node = live.context.createScriptProcessor(2048, 1, 1); // about 85 ms at 24 kHz
    live.node.onaudioprocess = (ev) => {
      if (live.socket && live.socket.readyState === 1) {
        live.socket.send(JSON.stringify({ type: "input_audio_buffer.append", audio: pcm16Base64(ev.inputBuffer.getChannelData(0)) }));
      }
    };
    source.connect(live.node); live.node.connect(live.context.destination);
    $("live-button").textContent = "■ Stop live"; $("live-button").classList.add("recording");
    setState("streaming", "listening");
  };
  live.socket.onclose = () => { if (live.socket) stopLive(); };
}
$("live-button").addEventListener("click", () => (live.socket ? stopLive() : startLive()));

// ---- talking to the API ----
async function apiError(response) {
  let message = response.statusText || "request failed";
  try { message = (await response.json()).error.message; } catch (_) { /* not our envelope */ }
  const retry = response.headers.get("Retry-After");
  const prefix = {
    400: "The server could not use this request", 401: "API key needed or wrong", 404: "Not found",
    413: "File too large", 429: "Server busy", 503: "Server unavailable", 504: "Took too long",
  }[response.status] || `Error ${response.status}`;
  return `${prefix}: ${message}${retry ? ` Retry in ${retry} s.` : ""}`;
}

async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
      if (data) onEvent(JSON.parse(data));
    }
  }
}

async function submit(event) {
  event.preventDefault();
  if (!state.audio) return;
  resetOutput();
  const task = $("task").value, format = $("format").value;
  const streaming = $("stream").checked && task === "transcribe";
  const form = new FormData();
  form.append("file", state.audio, state.name);
  form.append("model", "whisper-1");
  form.append("response_format", format);
  if ($("language").value && task === "transcribe") form.append("language", $("language").value);
  if (streaming) form.append("stream", "true");
  const headers = {};
  if ($("key").value) headers.Authorization = `Bearer ${$("key").value}`;
  state.controller = new AbortController();
  setState("uploading", "uploading…");
  try {
    const url = `/v1/audio/${task === "translate" ? "translations" : "transcriptions"}`;
    const response = await fetch(url, { method: "POST", body: form, headers, signal: state.controller.signal });
    if (!response.ok) throw new Error(await apiError(response));
    setState("streaming", "transcribing…");
    if (streaming) {
      const events = [];
      await readEvents(response, (e) => {
        events.push(e);
        if (e.type === "transcript.text.delta") $("live").textContent += e.delta;
        else if (e.type === "transcript.text.segment") addSegment({ start_ms: e.start * 1000, end_ms: e.end * 1000, text: e.text });
        else if (e.type === "transcript.text.done") finish(e.text);
        else if (e.type === "error") throw new Error(e.error.message);
      });
      $("raw").textContent = events.map((e) => JSON.stringify(e)).join("\n");
    } else if (format === "json" || format === "verbose_json") {
      const body = await response.json();
      $("raw").textContent = JSON.stringify(body, null, 2);
      state.language = body.language || null; state.duration = body.duration || null;
      for (const s of body.segments || []) addSegment({ start_ms: s.start * 1000, end_ms: s.end * 1000, text: s.text });
      finish(body.text);
    } else {
      const body = await response.text();
      $("raw").textContent = body;
      finish(format === "text" ? body.trim() : "");
      if (format !== "text") $("live").textContent = body;
    }
    setState("done", `done: ${state.segments.length} segment(s)`);
  } catch (err) {
    setState("failed", "");
    showError(err.name === "AbortError" ? "Cancelled." : err.message);
  } finally {
    state.controller = null;
  }
}
$("form").addEventListener("submit", submit);
$("cancel").addEventListener("click", () => state.controller && state.controller.abort());

// ---- downloads ----
function download(content, type, extension) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([content], { type }));
  a.download = `${(state.name || "transcript").replace(/\.[^.]*$/, "")}.${extension}`;
  document.body.append(a);
  a.click();
  setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
}
$("download-srt").addEventListener("click", () => download(renderSrt(state.segments), "text/plain", "srt"));
$("download-vtt").addEventListener("click", () => download(renderVtt(state.segments), "text/vtt", "vtt"));
$("download-json").addEventListener("click", () => {
  const segments = state.segments.map((s, id) => ({ id, start: s.start_ms / 1000, end: s.end_ms / 1000, text: s.text }));
  download(JSON.stringify({ text: state.text, segments }, null, 2), "application/json", "json");
});

// ---- start-up ----
for (const [code, name] of Object.entries(LANGUAGE_NAMES)) {
  const option = document.createElement("option");
  option.value = code;
  option.textContent = `${name} (${code})`;
  $("language").append(option);
}
fetch("/ready").then((r) => r.json()).then((body) => { $("model").textContent = body.model || "loading"; }).catch(() => {});
setState("idle");
