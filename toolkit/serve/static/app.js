// clipkit web page: choose or drop an image, edit the labels (zero-shot), see the scores as bars.
// An image the head rejects (best probability under its threshold) is shown as "none of these".
"use strict";

const UNKNOWN_LABEL = "none of these";

const $ = (id) => document.getElementById(id);
const state = { file: null, files: [], defaultLabels: [], mode: null };
const VIDEO_SUFFIX = /\.(mp4|webm|mov|mkv|avi)$/i;

function isVideo(file) {
  return (file.type || "").startsWith("video/") || VIDEO_SUFFIX.test(file.name);
}

function apiHeaders() {
  const key = sessionStorage.getItem("clipkit-api-key");
  return key ? { "X-API-Key": key } : {};
}

async function api(path, options = {}) {
  const resp = await fetch(path, { ...options, headers: { ...apiHeaders(), ...(options.headers || {}) } });
  let body = null;
  try { body = await resp.json(); } catch (e) { body = null; }
  if (resp.status === 401) $("key-box").hidden = false;
  if (!resp.ok) {
    const message = body && body.error ? body.error.message : `HTTP ${resp.status}`;
    throw new Error(message);
  }
  return body;
}

function showError(message) {
  $("error").textContent = message || "";
  $("error").hidden = !message;
}

async function loadInfo() {
  try {
    const info = await api("/v1/info");
    state.mode = info.mode;
    state.defaultLabels = info.labels;
    const threshold = ((info.head || {}).calibration || {}).reject_below;
    $("model-info").textContent = `${info.mode === "zeroshot" ? "zero-shot" : "trained probe"} · ${info.model}` +
      (info.pretrained ? ` / ${info.pretrained}` : "") + ` · ${info.labels.length} labels` +
      (threshold ? ` · "${UNKNOWN_LABEL}" under ${pct(threshold)}` : "");
    if (info.mode === "zeroshot") {
      $("labels-box").hidden = false;
      if (!$("labels").value.trim()) $("labels").value = info.labels.join("\n");
    }
    showError("");
  } catch (e) {
    $("model-info").textContent = "not ready";
    showError(e.message);
    if (!$("key-box").hidden) return;  // waiting for a key
    setTimeout(loadInfo, 2000);  // the model may still be loading
  }
}

function chooseFiles(list) {
  // one image: its bars; several images: one line each (bars of the first); a video: its segments and reps
  const files = Array.from(list || []);
  if (!files.length) return;
  const video = files.find(isVideo);
  state.files = video ? [video] : files;
  chooseFile(state.files[0]);
}

function chooseFile(file) {
  if (!file) return;
  state.file = file;
  const img = $("preview");
  if (img.src) URL.revokeObjectURL(img.src);
  img.src = URL.createObjectURL(file);
  img.hidden = isVideo(file);
  $("drop-text").textContent = state.files.length > 1 ? `${state.files.length} images` : file.name;
  $("classify").disabled = false;
  classify();
}

function pct(score) {
  return `${(100 * score).toFixed(1)}%`;
}

function statusText(result, threshold) {
  if (Array.isArray(result.labels)) {  // a multi-label head: every label above its own threshold
    return result.labels.length ? `Labels: ${result.labels.join(", ")}` : "Labels: none above their thresholds";
  }
  if (!result.rejected) return `Best: ${result.label} (${pct(result.score)})`;
  const best = result.top_k[0];
  if (result.reason === "unfamiliar") {  // the head's out-of-set detector: far from everything it knows
    return `Best: ${UNKNOWN_LABEL} (unfamiliar: unlike anything the head knows; the closest label, ` +
      `${best.label}, scores ${pct(best.score)})`;
  }
  return `Best: ${UNKNOWN_LABEL} (the closest, ${best.label} at ${pct(best.score)}, is under the ` +
    `${pct(threshold)} threshold)`;
}

function renderBars(result) {
  const bars = $("bars");
  bars.replaceChildren();
  bars.classList.toggle("rejected", Boolean(result.rejected));
  const entries = Object.entries(result.scores).sort((a, b) => b[1] - a[1]);
  entries.forEach(([label, score], i) => {
    const row = document.createElement("li");
    row.className = "bar-row" + (i === 0 ? " best" : "");
    const name = document.createElement("span");
    name.className = "bar-label";
    name.textContent = label;
    const share = document.createElement("span");
    share.className = "bar-pct";
    share.textContent = pct(score);
    const track = document.createElement("div");
    track.className = "bar-track";
    const fill = document.createElement("div");
    fill.className = "bar-fill";
    fill.style.width = `${(100 * score).toFixed(2)}%`;
    track.appendChild(fill);
    row.append(name, share, track);
    bars.appendChild(row);
  });
}

function renderResults(items) {
  // [{name, text, rejected}] as one line each under the bars (several images, a video's segments)
  const list = $("results");
  list.replaceChildren();
  list.hidden = !items.length;
  items.forEach((item) => {
    const row = document.createElement("li");
    row.className = "result-row" + (item.rejected ? " rejected" : "");
    row.textContent = item.name ? `${item.name}: ${item.text}` : item.text;
    list.appendChild(row);
  });
}

async function classifyVideo(file) {
  const form = new FormData();
  form.append("file", file, file.name);
  const doc = await api("/v1/predict/video", { method: "POST", body: form });
  const reps = Object.entries(doc.reps || {}).map(([label, n]) => `${label} ${n}`).join(", ");
  $("status").textContent = `${file.name}: ${doc.segments.length} segments` + (reps ? `; reps: ${reps}` : "");
  $("status").classList.remove("rejected");
  $("bars").replaceChildren();
  renderResults(doc.segments.map((seg) => ({
    name: `${seg.start_s.toFixed(1)}-${seg.end_s.toFixed(1)} s`,
    text: `${seg.label === null || seg.rejected ? UNKNOWN_LABEL : seg.label}` +
      (seg.reps ? ` (${seg.reps} reps)` : ""),
    rejected: Boolean(seg.rejected),
  })));
}

async function classify() {
  if (!state.file) return;
  if (isVideo(state.file)) {
    $("classify").disabled = true;
    $("status").textContent = "Scoring the video…";
    try {
      await classifyVideo(state.file);
      showError("");
    } catch (e) {
      $("status").textContent = "";
      renderResults([]);
      showError(e.message);
    } finally {
      $("classify").disabled = false;
    }
    return;
  }
  const form = new FormData();
  const files = state.files.length ? state.files : [state.file];
  files.forEach((f) => form.append("files", f, f.name));
  if (state.mode === "zeroshot") {
    const labels = $("labels").value.split("\n").map((s) => s.trim()).filter(Boolean);
    if (labels.join("\n") !== state.defaultLabels.join("\n")) form.append("labels", labels.join("\n"));
  }
  $("classify").disabled = true;
  $("status").textContent = "Classifying…";
  try {
    const body = await api("/v1/predict", { method: "POST", body: form });
    const r = body.results[0];
    if (r.error) throw new Error(`${files[0].name}: ${r.error}`);
    $("status").textContent = statusText(r, body.reject_below);
    $("status").classList.toggle("rejected", Boolean(r.rejected));
    renderBars(r);
    renderResults(files.length > 1 ? body.results.map((res, i) => ({
      name: files[i].name,
      text: res.error ? `error: ${res.error}` : statusText(res, body.reject_below).replace(/^Best: /, ""),
      rejected: Boolean(res.rejected || res.error),
    })) : []);
    showError("");
  } catch (e) {
    $("status").textContent = "";
    $("bars").replaceChildren();
    showError(e.message);
  } finally {
    $("classify").disabled = false;
  }
}

function setup() {
  const drop = $("drop");
  $("file").addEventListener("change", (e) => chooseFiles(e.target.files));
  ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => {
    e.preventDefault(); drop.classList.add("over");
  }));
  ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => {
    e.preventDefault(); drop.classList.remove("over");
  }));
  drop.addEventListener("drop", (e) => chooseFiles(e.dataTransfer.files));
  $("classify").addEventListener("click", classify);
  $("reset-labels").addEventListener("click", () => { $("labels").value = state.defaultLabels.join("\n"); });
  $("api-key").addEventListener("change", (e) => {
    sessionStorage.setItem("clipkit-api-key", e.target.value.trim());
    $("key-box").hidden = true;
    loadInfo();
  });
  loadInfo();
}

document.addEventListener("DOMContentLoaded", setup);
