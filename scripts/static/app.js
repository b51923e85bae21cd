// The deepfake detector's page: sends the chosen file's bytes to TorchServe and shows what it answers.
// Plain browser JavaScript, no build step and nothing from the internet (the server's CSP would block it).
// Response schemas: README.md (images), docs/WEB.md (what the page reads of videos and explanations).
"use strict";

const $ = (id) => document.getElementById(id);
const VIDEO_EXTENSIONS = ["mp4", "m4v", "webm", "avi", "mov", "mkv"];
const LARGE_UPLOAD_BYTES = 6 * 2 ** 20;  // TorchServe's default max_request_size is 6,553,500 bytes
const TOKEN_KEYS = { inference: "deepfake.key.inference", management: "deepfake.key.management" };
const STATUS_TEXTS = {
  400: "The server refused the request (400).",
  401: "The server wants a token: enter the keys under \u201cServer and token\u201d.",
  404: "The server has no such model (404): check the model name the page was started with.",
  413: "The file is larger than the server accepts (TorchServe's max_request_size): choose a smaller file.",
  415: "The server cannot read this file (415).",
  422: "The model cannot judge this picture (422): the lines above say what to send instead.",
  501: "The server does not offer this (501).",
  503: "The model cannot answer now (503): no worker is ready, or it failed on this request; try again shortly.",
  507: "The server ran out of memory for this request (507): try a smaller file, or again later.",
};

const state = { config: null, seq: 0, objectUrl: null, kind: null, result: null, heatmapReady: false };

/** An error to show: a headline and the lines that tell what to do. */
class PageError extends Error {
  constructor(message, details = []) {
    super(message);
    this.details = details.filter(Boolean);
  }
}

function pct(value) {
  return `${(value * 100).toFixed(1)} %`;
}

function authHeaders(api) {
  const key = sessionStorage.getItem(TOKEN_KEYS[api]);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

/** The error a non-2xx answer stands for: the handler's per-item error, TorchServe's own, or the status alone. */
function errorFromAnswer(status, body, text) {
  const standard = STATUS_TEXTS[status] || `The server answered HTTP ${status}.`;
  if (body && body.error && typeof body.error === "object") {
    const { message, accepted, code } = body.error;
    return new PageError(message || standard, [accepted && `Accepted: ${accepted}`, code && `Error code: ${code}`,
      status in STATUS_TEXTS && standard]);
  }
  if (body && body.message) {
    return new PageError(standard, [body.message]);
  }
  return new PageError(standard, [text && text.slice(0, 300)]);
}

/** fetch() that turns every failure into a PageError saying what to check. */
async function callApi(url, options, api) {
  let response;
  try {
    response = await fetch(url, { ...options, headers: { ...(options.headers || {}), ...authHeaders(api) } });
  } catch (error) {
    throw new PageError(`Could not reach TorchServe's ${api} API at ${url}.`, [
      "Either TorchServe is not running there, or it does not allow this page's origin (CORS): its "
      + `config.properties needs cors_allowed_origin=${location.origin}.`,
      `Browser error: ${error.message}`]);
  }
  const text = await response.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch (ignored) {
    body = null;
  }
  if (!response.ok) {
    throw errorFromAnswer(response.status, body, text);
  }
  return body;
}

function setBusy(value) {
  document.body.dataset.state = value;
}

function showStatus(text) {
  $("status").textContent = text;
}

function showError(error) {
  const box = $("error");
  box.replaceChildren();
  const headline = document.createElement("p");
  headline.className = "error-message";
  headline.textContent = error instanceof PageError ? error.message : `Unexpected error: ${error}`;
  box.append(headline);
  for (const line of error.details || []) {
    const detail = document.createElement("p");
    detail.className = "error-detail";
    detail.textContent = line;
    box.append(detail);
  }
  box.hidden = false;
}

// --- model, version and device from the management API --------------------------------------------------------

async function loadModelInfo() {
  const { management, model } = state.config;
  const url = `${management}/models/${encodeURIComponent(model)}`;
  const info = $("model-info");
  delete info.dataset.version;
  try {
    const [described] = await callApi(url, {}, "management");
    const workers = described.workers || [];
    const ready = workers.filter((worker) => worker.status === "READY").length;
    info.dataset.name = described.modelName;
    info.dataset.version = described.modelVersion;
    info.textContent = `Model ${described.modelName} v${described.modelVersion} \u00b7 ${ready}/${workers.length} `
      + "workers ready";
    const [custom] = await callApi(`${url}?customized=true`, {}, "management");
    let meta = custom.customizedMetadata || {};
    if (typeof meta === "string") {
      meta = JSON.parse(meta);
    }
    const handlerModel = meta.model || {};
    const threshold = typeof meta.threshold === "number" ? ` \u00b7 threshold ${pct(meta.threshold)}` : "";
    info.textContent += ` \u00b7 ${handlerModel.architecture || "?"} \u00b7 calibration `
      + `${handlerModel.calibration || "none"}${threshold}`;
    const device = handlerModel.device || (workers.some((worker) => worker.gpu) ? "gpu" : "cpu");
    $("device-info").dataset.device = device;
    $("device-info").textContent = `Device: ${device} \u00b7 torch threads ${meta.torch_threads ?? "?"} \u00b7 `
      + `precision ${meta.precision || "?"}`;
  } catch (error) {
    const why = `${error.message} ${(error.details || []).join(" ")}`;
    if (info.dataset.version) {  // the plain description came: keep name and version, say what is missing
      info.textContent += ` \u00b7 handler details unavailable: ${why}`;
    } else {
      info.textContent = `Model info unavailable: ${why}`;
    }
  }
}

// --- choosing a file and showing it -------------------------------------------------------------------------

function isVideo(file) {
  const extension = file.name.split(".").pop().toLowerCase();
  return file.type.startsWith("video/") || VIDEO_EXTENSIONS.includes(extension);
}

function resetResults() {
  for (const id of ["error", "verdict", "heatmap-controls", "faces-panel", "timeline-panel", "borderline",
    "uncalibrated", "verdict-note", "heatmap"]) {
    $(id).hidden = true;
  }
  $("heatmap-toggle").checked = false;
  $("heatmap-toggle").disabled = true;
  $("heatmap").removeAttribute("src");
  $("faces-list").replaceChildren();
  $("timeline").replaceChildren();
  state.result = null;
  state.heatmapReady = false;
  clearOverlay();
}

function showPreview(file) {
  if (state.objectUrl) {
    URL.revokeObjectURL(state.objectUrl);
  }
  state.objectUrl = URL.createObjectURL(file);
  state.kind = isVideo(file) ? "video" : "image";
  const image = $("preview-image");
  const video = $("preview-video");
  image.hidden = state.kind !== "image";
  video.hidden = state.kind !== "video";
  if (state.kind === "image") {
    video.removeAttribute("src");
    image.src = state.objectUrl;
  } else {
    image.removeAttribute("src");
    video.src = state.objectUrl;
  }
  $("file-name").textContent = `${file.name} \u00b7 ${(file.size / 1024).toFixed(0)} KiB`;
  $("stage").hidden = false;
}

function mediaElement() {
  return state.kind === "video" ? $("preview-video") : $("preview-image");
}

// --- the verdict ---------------------------------------------------------------------------------------------

function renderVerdict(body) {
  const label = $("verdict-label");
  label.textContent = body.label === "fake" ? "Fake" : "Real";
  label.className = `label ${body.label}`;
  label.dataset.label = body.label;
  const probability = $("probability-fake");
  probability.textContent = pct(body.probability_fake);
  probability.dataset.value = String(body.probability_fake);
  $("confidence").textContent = pct(body.confidence);
  $("threshold").textContent = pct(body.threshold);
  $("borderline").hidden = !body.borderline;
  $("uncalibrated").hidden = body.calibrated !== false;
  let kind = "image";
  if (body.scored === "video" && body.video) {
    kind = `video \u00b7 ${body.video.frames_scored} frames scored`;
  } else if (Array.isArray(body.faces) && body.faces.length) {
    kind = `image \u00b7 ${body.faces.length} face${body.faces.length > 1 ? "s" : ""}`;
  } else if (body.scored) {
    kind = `image \u00b7 ${body.scored.replaceAll("_", " ")}`;
  }
  $("verdict-kind").textContent = kind;
  if (body.note) {
    $("verdict-note").textContent = body.note;
    $("verdict-note").hidden = false;
  }
  $("verdict").hidden = false;
}

function renderFaces(faces) {
  const list = $("faces-list");
  list.replaceChildren();
  for (const [index, face] of faces.entries()) {
    const item = document.createElement("li");
    const [x, y, w, h] = face.box;
    item.textContent = `${face.label || "?"} \u00b7 ${pct(face.probability_fake)} fake \u00b7 `
      + `box ${w}\u00d7${h} at (${x}, ${y})`
      + (index === state.result.decided_by_face ? " \u00b7 decides the verdict" : "");
    list.append(item);
  }
  $("faces-panel").hidden = faces.length === 0;
}

// --- face boxes over the preview -------------------------------------------------------------------------------

function clearOverlay() {
  const canvas = $("overlay");
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  canvas.dataset.boxes = "0";
}

/** Draws boxes given in the media's own pixels over its displayed box (the canvas covers the element). */
function drawBoxes(faces, naturalWidth, naturalHeight) {
  const media = mediaElement();
  const canvas = $("overlay");
  const ratio = window.devicePixelRatio || 1;
  canvas.width = Math.round(media.clientWidth * ratio);
  canvas.height = Math.round(media.clientHeight * ratio);
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, canvas.width, canvas.height);
  if (!faces.length || !naturalWidth || !naturalHeight) {
    canvas.dataset.boxes = "0";
    return;
  }
  const scaleX = canvas.width / naturalWidth;
  const scaleY = canvas.height / naturalHeight;
  context.lineWidth = 3 * ratio;
  context.font = `${13 * ratio}px system-ui, sans-serif`;
  for (const face of faces) {
    const [x, y, w, h] = face.box;
    const colour = face.probability_fake >= (state.result?.threshold ?? 0.5) ? "#e53935" : "#2e7d32";
    context.strokeStyle = colour;
    context.strokeRect(x * scaleX, y * scaleY, w * scaleX, h * scaleY);
    const text = pct(face.probability_fake);
    const textWidth = context.measureText(text).width + 8 * ratio;
    context.fillStyle = colour;
    context.fillRect(x * scaleX, Math.max(0, y * scaleY - 18 * ratio), textWidth, 18 * ratio);
    context.fillStyle = "#fff";
    context.fillText(text, x * scaleX + 4 * ratio, Math.max(0, y * scaleY - 18 * ratio) + 13 * ratio);
  }
  canvas.dataset.boxes = String(faces.length);
}

/** Gives the media box the picture's aspect ratio (style.css sizes the box from it). */
function fitMedia() {
  const media = mediaElement();
  const width = state.kind === "video" ? media.videoWidth : media.naturalWidth;
  const height = state.kind === "video" ? media.videoHeight : media.naturalHeight;
  if (width && height) {
    $("media-box").style.setProperty("--aspect", String(width / height));
  }
}

function redrawOverlay() {
  const body = state.result;
  if (!body) {
    return;
  }
  if (state.kind === "image") {
    const image = $("preview-image");
    drawBoxes(body.faces || [], image.naturalWidth, image.naturalHeight);
  } else {
    drawVideoFrameBoxes();
  }
}

// --- heat map (Grad-CAM) ---------------------------------------------------------------------------------------

async function loadExplanation(file, seq) {
  const controls = $("heatmap-controls");
  const status = $("heatmap-status");
  controls.hidden = false;
  controls.dataset.state = "loading";
  status.textContent = "Heat map: computing\u2026";
  const { inference, model } = state.config;
  try {
    const body = await callApi(`${inference}/explanations/${encodeURIComponent(model)}`, {
      method: "POST", body: file, headers: { "Content-Type": file.type || "application/octet-stream" },
    }, "inference");
    if (seq !== state.seq) {
      return;
    }
    const explanation = body && body.explanation;
    if (!explanation || !explanation.heatmap_png) {
      throw new PageError("the server's answer carries no explanation (its handler has no Grad-CAM support)");
    }
    $("heatmap").src = `data:image/png;base64,${explanation.heatmap_png}`;
    $("heatmap-toggle").disabled = false;
    state.heatmapReady = true;
    controls.dataset.state = "ready";
    status.textContent = `Grad-CAM of the \u201c${explanation.target}\u201d class at layer ${explanation.layer}: `
      + "warmer means the region pushed the score towards fake.";
  } catch (error) {
    if (seq !== state.seq) {
      return;
    }
    controls.dataset.state = "unavailable";
    status.textContent = `Heat map unavailable: ${error.message}`;
  }
}

// --- video timeline --------------------------------------------------------------------------------------------

const SVG = "http://www.w3.org/2000/svg";

function svgElement(name, attributes) {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) {
    element.setAttribute(key, String(value));
  }
  return element;
}

function renderTimeline(body) {
  const timeline = body.timeline || [];
  const video = body.video || {};
  const aggregation = video.aggregation || {};
  const decided = new Set(aggregation.decided_by_frames || []);
  $("aggregation").textContent = `Video verdict: ${aggregation.rule || "?"}, the mean of the ${aggregation.k ?? "?"} `
    + `most fake of ${video.frames_scored ?? timeline.length} scored frames (decided by frames `
    + `${[...decided].join(", ") || "?"}). Sampled ${video.frames_sampled ?? "?"} of ${video.frame_count ?? "?"} `
    + `frames \u00b7 ${(video.duration_s ?? 0).toFixed(2)} s at ${(video.fps ?? 0).toFixed(1)} fps \u00b7 `
    + `${video.width ?? "?"}\u00d7${video.height ?? "?"} ${video.container || ""}`;
  const width = 640;
  const height = 220;
  const left = 40;
  const right = 12;
  const top = 12;
  const bottom = 28;
  const duration = Math.max(video.duration_s || 0, ...timeline.map((entry) => entry.time_s), 0.001);
  const x = (time) => left + (time / duration) * (width - left - right);
  const y = (probability) => top + (1 - probability) * (height - top - bottom);
  const svg = svgElement("svg", { viewBox: `0 0 ${width} ${height}`, role: "group",
    "aria-label": "Probability of fake per sampled frame over time" });
  svg.append(svgElement("line", { class: "axis", x1: left, y1: y(0), x2: width - right, y2: y(0) }));
  svg.append(svgElement("line", { class: "axis", x1: left, y1: y(0), x2: left, y2: y(1) }));
  for (const tick of [0, 0.5, 1]) {
    const label = svgElement("text", { class: "tick", x: left - 6, y: y(tick) + 4, "text-anchor": "end" });
    label.textContent = `${tick * 100}%`;
    svg.append(label);
  }
  for (const time of [0, duration]) {
    const label = svgElement("text", { class: "tick", x: x(time), y: height - 8, "text-anchor": "middle" });
    label.textContent = `${time.toFixed(1)} s`;
    svg.append(label);
  }
  svg.append(svgElement("line", { class: "threshold", x1: left, y1: y(body.threshold), x2: width - right,
    y2: y(body.threshold) }));
  // A face model leaves frames without a face out of the verdict (probability_fake null): a grey dot on the axis.
  const judged = (entry) => typeof entry.probability_fake === "number";
  svg.append(svgElement("polyline", { class: "curve",
    points: timeline.filter(judged).map((entry) => `${x(entry.time_s)},${y(entry.probability_fake)}`).join(" ") }));
  for (const entry of timeline) {
    const scored = judged(entry);
    const point = svgElement("circle", { class: `point ${scored ? entry.label : "no-face"}`, cx: x(entry.time_s),
      cy: y(scored ? entry.probability_fake : 0), r: decided.has(entry.frame) ? 7 : scored ? 5 : 4, tabindex: 0,
      role: "button", "data-frame": entry.frame, "data-time": entry.time_s, ...(scored ? {} : { fill: "#9e9e9e" }),
      "aria-label": `Frame ${entry.frame} at ${entry.time_s.toFixed(2)} s: `
        + (scored ? `${pct(entry.probability_fake)} fake` : "no face found, not judged") });
    const title = svgElement("title", {});
    title.textContent = point.getAttribute("aria-label");
    point.append(title);
    const seek = () => seekTo(entry);
    point.addEventListener("click", seek);
    point.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        seek();
      }
    });
    svg.append(point);
  }
  $("timeline").replaceChildren(svg);
  $("timeline-panel").hidden = false;
}

function seekTo(entry) {
  const video = $("preview-video");
  video.pause();
  video.currentTime = entry.time_s;
}

/** The timeline entry shown at the video's current time: the nearest one within half a sampling step. */
function timelineEntryAt(time) {
  const timeline = state.result?.timeline || [];
  if (!timeline.length) {
    return null;
  }
  const step = timeline.length > 1 ? (timeline[timeline.length - 1].time_s - timeline[0].time_s)
    / (timeline.length - 1) : 1;
  const fps = state.result.video?.fps || 25;
  let best = timeline[0];
  for (const entry of timeline) {
    if (Math.abs(entry.time_s - time) < Math.abs(best.time_s - time)) {
      best = entry;
    }
  }
  return Math.abs(best.time_s - time) <= Math.max(step / 2, 1 / fps) ? best : null;
}

function drawVideoFrameBoxes() {
  const video = $("preview-video");
  const entry = video.paused ? timelineEntryAt(video.currentTime) : null;
  for (const point of document.querySelectorAll("#timeline .point")) {
    point.classList.toggle("current", entry !== null && Number(point.dataset.frame) === entry.frame);
  }
  const videoInfo = state.result?.video || {};
  drawBoxes(entry?.faces || [], video.videoWidth || videoInfo.width, video.videoHeight || videoInfo.height);
}

// --- one analysis --------------------------------------------------------------------------------------------

async function analyse(file) {
  const seq = ++state.seq;
  resetResults();
  showPreview(file);
  setBusy("busy");
  showStatus(`Sending ${file.name} to the model\u2026`);
  const { inference, model } = state.config;
  const started = performance.now();
  try {
    const body = await callApi(`${inference}/predictions/${encodeURIComponent(model)}`, {
      method: "POST", body: file, headers: { "Content-Type": file.type || "application/octet-stream" },
    }, "inference");
    if (seq !== state.seq) {
      return;
    }
    state.result = body;
    renderVerdict(body);
    if (body.scored === "video" || Array.isArray(body.timeline)) {
      renderTimeline(body);
    } else {
      renderFaces(body.faces || []);
      loadExplanation(file, seq);
    }
    redrawOverlay();
    showStatus(`Answered in ${Math.round(performance.now() - started)} ms \u00b7 request ${body.request_id || "?"}`);
    setBusy("done");
  } catch (error) {
    if (seq !== state.seq) {
      return;
    }
    if (error instanceof PageError && error.message.startsWith("Could not reach") && file.size > LARGE_UPLOAD_BYTES) {
      // TorchServe may close the connection on a body over max_request_size before the browser reads its 413.
      error.details.push(`This file is ${(file.size / 2 ** 20).toFixed(1)} MiB: the server may also have cut the `
        + "upload off for exceeding its max_request_size.");
    }
    showError(error);
    showStatus("No verdict.");
    setBusy("error");
  }
}

// --- wiring ----------------------------------------------------------------------------------------------------

function wireTokens() {
  for (const [api, key] of Object.entries(TOKEN_KEYS)) {
    const input = $(`token-${api}`);
    input.value = sessionStorage.getItem(key) || "";
    input.addEventListener("change", () => {
      if (input.value.trim()) {
        sessionStorage.setItem(key, input.value.trim());
      } else {
        sessionStorage.removeItem(key);
      }
      if (api === "management") {
        loadModelInfo();
      }
    });
  }
}

function wireInput() {
  const zone = $("drop-zone");
  const input = $("file-input");
  input.addEventListener("change", () => {
    if (input.files.length) {
      analyse(input.files[0]);
    }
  });
  for (const name of ["dragenter", "dragover"]) {
    zone.addEventListener(name, (event) => {
      event.preventDefault();
      zone.classList.add("dragging");
    });
  }
  for (const name of ["dragleave", "drop"]) {
    zone.addEventListener(name, () => zone.classList.remove("dragging"));
  }
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    if (event.dataTransfer.files.length) {
      analyse(event.dataTransfer.files[0]);
    }
  });
  $("heatmap-toggle").addEventListener("change", (event) => {
    $("heatmap").hidden = !(event.target.checked && state.heatmapReady);
  });
  $("preview-image").addEventListener("load", () => {
    fitMedia();
    redrawOverlay();
  });
  const video = $("preview-video");
  video.addEventListener("loadedmetadata", fitMedia);
  for (const name of ["loadedmetadata", "seeked", "pause", "play"]) {
    video.addEventListener(name, drawVideoFrameBoxes);
  }
  video.addEventListener("error", () => {
    $("file-name").textContent += " \u00b7 this browser cannot play it; the verdict does not need it to";
  });
  new ResizeObserver(redrawOverlay).observe($("media-box"));
}

async function main() {
  setBusy("idle");
  try {
    const response = await fetch("config.json", { cache: "no-store" });
    state.config = await response.json();
    const model = new URLSearchParams(location.search).get("model");  // ?model=NAME: another model of that server
    if (model && /^[\w.-]+$/.test(model)) {
      state.config.model = model;
    }
  } catch (error) {
    showError(new PageError("The page could not read its config.json from the web app server.", [String(error)]));
    setBusy("error");
    return;
  }
  $("server-urls").textContent = `Inference ${state.config.inference} \u00b7 management ${state.config.management}`
    + ` \u00b7 model ${state.config.model}`;
  wireTokens();
  wireInput();
  await loadModelInfo();
  document.body.dataset.ready = "true";
}

main();
