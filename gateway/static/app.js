// The web page of the aidetect gateway: pick or drop images, preview them, analyze them.
// One file goes to POST /predict, several to POST /predict/batch (one model call).
"use strict";

// Until GET /v1/model tells the server's own limits: the defaults (the server has the last word).
const uploadLimits = { max_batch_files: 16, max_upload_bytes: 20 * 1024 * 1024 };

const elements = {
  dropZone: document.getElementById("drop-zone"),
  fileInput: document.getElementById("file-input"),
  choose: document.getElementById("choose"),
  analyze: document.getElementById("analyze"),
  clear: document.getElementById("clear"),
  apiKey: document.getElementById("api-key"),
  message: document.getElementById("message"),
  results: document.getElementById("results"),
  modelInfo: document.getElementById("model-info"),
  template: document.getElementById("card-template"),
  explain: document.getElementById("explain"),
};

// Each selected file with its card: {file, card, previewUrl}
let selections = [];

function requestHeaders() {
  const key = elements.apiKey.value.trim();
  return key ? { "X-API-Key": key } : {};
}

function showMessage(text) {
  elements.message.textContent = text;
  elements.message.hidden = !text;
}

function formatBytes(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(0)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

// The server's error text when it sent one ({"success": false, "error": ...}), else the status.
async function errorText(response) {
  try {
    const body = await response.json();
    if (body && body.error) return body.error;
  } catch (ignored) {
    // not JSON: fall through to the status line
  }
  return `HTTP ${response.status} ${response.statusText}`;
}

function explainStatus(status, text) {
  const hints = {
    401: "An API key is required (see 'API key').",
    413: "Too large.",
    415: "Unsupported image format.",
    429: "Too many requests; wait a moment.",
    503: "The model is not available right now; try again shortly.",
    504: "The model took too long to answer; try again.",
  };
  return hints[status] ? `${hints[status]} ${text}` : text;
}

function addFiles(fileList) {
  const files = Array.from(fileList);
  if (!files.length) return;
  showMessage("");
  for (const file of files) {
    const card = elements.template.content.firstElementChild.cloneNode(true);
    const previewUrl = URL.createObjectURL(file);
    const preview = card.querySelector(".preview");
    preview.src = previewUrl;
    preview.alt = `preview of ${file.name}`;
    // TIFF and other formats the browser cannot show still get analysed.
    preview.addEventListener("error", () => card.classList.add("no-preview"));
    card.querySelector(".filename").textContent = `${file.name} (${formatBytes(file.size)})`;
    elements.results.appendChild(card);
    selections.push({ file, card, previewUrl });
  }
  const tooBig = files.filter((file) => file.size > uploadLimits.max_upload_bytes).map((file) => file.name);
  if (tooBig.length) {
    showMessage(`Over ${formatBytes(uploadLimits.max_upload_bytes)}, the server will refuse: ${tooBig.join(", ")}`);
  } else if (selections.length > uploadLimits.max_batch_files) {
    showMessage(`At most ${uploadLimits.max_batch_files} images at once: the server will refuse more.`);
  }
  updateButtons();
}

function clearAll() {
  for (const selection of selections) URL.revokeObjectURL(selection.previewUrl);
  selections = [];
  elements.results.replaceChildren();
  elements.fileInput.value = "";
  showMessage("");
  updateButtons();
}

function updateButtons(busy = false) {
  elements.analyze.disabled = busy || selections.length === 0;
  elements.clear.disabled = busy || selections.length === 0;
  elements.analyze.textContent = busy ? "Analyzing…" : "Analyze";
}

const VERDICT_TEXT = {
  ai: "Likely AI-generated",
  real: "Likely a real photo",
  inconclusive: "Inconclusive: too close to call",
};
const IMPLIES_TEXT = {
  ai: "declares AI generation",
  hint_ai: "hint of a generator",
  camera: "claims a camera",
  none: "no bearing",
};

function showProvenance(list, findings) {
  list.replaceChildren();
  for (const finding of findings || []) {
    const item = document.createElement("li");
    item.className = `implies-${finding.implies}`;
    const tag = document.createElement("span");
    tag.className = "tag";
    tag.textContent = IMPLIES_TEXT[finding.implies] || finding.implies;
    item.append(tag, ` ${finding.finding}`);
    list.appendChild(item);
  }
  if (!list.children.length) {
    const item = document.createElement("li");
    item.className = "implies-none";
    item.textContent = "No provenance metadata in the file (its absence proves nothing: most sites strip it).";
    list.appendChild(item);
  }
}

function showBand(gauge, band) {
  const mark = gauge.querySelector(".band");
  mark.hidden = !band;
  if (!band) return;
  mark.style.left = `${band.real_below * 100}%`;
  mark.style.width = `${(band.ai_from - band.real_below) * 100}%`;
}

// The heatmap of ?explain=true: the model's 256x256 input with the heatmap over it, shown in
// place of the preview by the card's toggle.
function showExplanation(card, explanation, previewUrl) {
  const toggle = card.querySelector(".toggle-heatmap");
  const preview = card.querySelector(".preview");
  toggle.hidden = !explanation;
  preview.src = previewUrl;
  card.classList.remove("showing-heatmap");
  if (!explanation) return;
  toggle.textContent = "Show heatmap";
  toggle.title = explanation.method;
  toggle.onclick = () => {
    const showing = card.classList.toggle("showing-heatmap");
    preview.src = showing ? explanation.overlay : previewUrl;
    toggle.textContent = showing ? "Show image" : "Show heatmap";
  };
}

function showResult(card, result) {
  const gauge = card.querySelector(".gauge");
  const state = card.querySelector(".state");
  card.classList.remove("is-ai", "is-real", "is-inconclusive", "is-error");
  if (!result.success) {
    card.classList.add("is-error");
    state.textContent = result.error;
    gauge.hidden = true;
    return;
  }
  const percent = result.ai_probability;
  const verdict = result.verdict || result.label;
  card.classList.add(`is-${verdict}`);
  state.textContent = "";
  gauge.hidden = false;
  const bar = gauge.querySelector(".bar");
  bar.setAttribute("aria-valuenow", percent.toFixed(2));
  gauge.querySelector(".fill").style.width = `${Math.min(100, Math.max(0, percent))}%`;
  gauge.querySelector(".threshold-mark").style.left = `${result.threshold * 100}%`;
  gauge.querySelector(".verdict").textContent = VERDICT_TEXT[verdict] || verdict;
  gauge.querySelector(".reason").textContent = result.verdict_reason || "";
  showBand(gauge, knownModel.version === result.model_version ? knownModel.band : null);
  showProvenance(gauge.querySelector(".provenance"), result.provenance);
  gauge.querySelector(".numbers").textContent =
    `${percent.toFixed(2)} % AI · threshold ${(result.threshold * 100).toFixed(1)} % · ` +
    `model v${result.model_version}`;
}

async function analyze() {
  if (!selections.length) return;
  showMessage("");
  updateButtons(true);
  for (const selection of selections) {
    selection.card.querySelector(".state").textContent = "Analyzing…";
  }
  const form = new FormData();
  const single = selections.length === 1;
  for (const selection of selections) form.append(single ? "file" : "files", selection.file);
  try {
    const query = elements.explain.checked ? "?explain=true" : "";
    const response = await fetch((single ? "/predict" : "/predict/batch") + query, {
      method: "POST",
      body: form,
      headers: requestHeaders(),
    });
    if (!response.ok) {
      const text = explainStatus(response.status, await errorText(response));
      showMessage(text);
      for (const selection of selections) showResult(selection.card, { success: false, error: text });
      return;
    }
    const body = await response.json();
    if (single) {
      showResult(selections[0].card, body);
      showExplanation(selections[0].card, body.explanation, selections[0].previewUrl);
    } else {
      body.results.forEach((result, index) => {
        showResult(selections[index].card, {
          ...result,
          model_version: body.model_version,
          error: result.success ? null : explainStatus(result.status, result.error),
        });
        showExplanation(selections[index].card, result.explanation, selections[index].previewUrl);
      });
    }
    updateModelInfo(body.model_name, body.model_version, body.version_label, single ? body.threshold : undefined);
  } catch (error) {
    showMessage(`Could not reach the server: ${error.message}`);
  } finally {
    updateButtons(false);
  }
}

// The model the page last heard about; a prediction updates the version, /v1/model also the threshold.
const knownModel = { threshold: undefined, version: undefined, band: null };

function updateModelInfo(name, version, label, threshold) {
  if (!name || version === null || version === undefined) return;
  if (threshold !== undefined) knownModel.threshold = threshold;
  const known = knownModel.threshold;
  const thresholdText = known === undefined ? "" : ` · threshold ${(known * 100).toFixed(1)} %`;
  elements.modelInfo.textContent = `Model: ${name} v${version} (${label})${thresholdText}`;
}

async function loadModelInfo() {
  try {
    const response = await fetch("/v1/model", { headers: requestHeaders() });
    if (!response.ok) {
      elements.modelInfo.textContent = `Model: unavailable (${await errorText(response)})`;
      return;
    }
    const info = await response.json();
    Object.assign(uploadLimits, info.upload_limits || {});
    knownModel.version = info.model_version;
    knownModel.band = info.verdict_band || null;
    updateModelInfo(info.model_name, info.model_version, info.version_label, info.threshold);
  } catch (error) {
    elements.modelInfo.textContent = `Model: server unreachable (${error.message})`;
  }
}

elements.choose.addEventListener("click", () => elements.fileInput.click());
elements.fileInput.addEventListener("change", () => addFiles(elements.fileInput.files));
elements.analyze.addEventListener("click", analyze);
elements.clear.addEventListener("click", clearAll);
elements.apiKey.addEventListener("change", loadModelInfo);
elements.dropZone.addEventListener("keydown", (event) => {
  if (event.key === "Enter" || event.key === " ") {
    event.preventDefault();
    elements.fileInput.click();
  }
});
for (const type of ["dragenter", "dragover"]) {
  elements.dropZone.addEventListener(type, (event) => {
    event.preventDefault();
    elements.dropZone.classList.add("dragging");
  });
}
for (const type of ["dragleave", "drop"]) {
  elements.dropZone.addEventListener(type, (event) => {
    event.preventDefault();
    elements.dropZone.classList.remove("dragging");
  });
}
elements.dropZone.addEventListener("drop", (event) => addFiles(event.dataTransfer.files));

loadModelInfo();
