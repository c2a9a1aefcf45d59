// New-run form: a preset fills every field with its values; the data source toggles the synthetic
// fields; a dataset can be uploaded in place: previewed first (which columns became features and
// which targets), stored once confirmed, with its row and column errors shown either way.

import { ApiError, postForm } from "./api.js";

const form = document.getElementById("run-form");
const presetValues = JSON.parse(document.getElementById("preset-values").textContent);
const presetSelect = document.getElementById("preset");
const datasetSelect = document.getElementById("dataset_id");
const useDataset = document.getElementById("use-dataset");

function fillFromPreset(name) {
  for (const [field, value] of Object.entries(presetValues[name] ?? {})) {
    const input = form.elements.namedItem(field);
    if (!input) continue;
    // a boolean field is a hidden marker plus a checkbox under the same name
    const inputs = input instanceof RadioNodeList ? [...input] : [input];
    for (const el of inputs) {
      if (el.type === "checkbox") el.checked = Boolean(value);
      else if (el.type !== "hidden") el.value = value;
    }
  }
  document.querySelectorAll(".preset-description").forEach((p) => { p.hidden = p.dataset.preset !== name; });
}

function syncDataSource() {
  const fromDataset = form.elements.namedItem("data_source").value === "dataset";
  document.querySelectorAll("fieldset.synthetic-only").forEach((fs) => { fs.disabled = fromDataset; });
  datasetSelect.disabled = !fromDataset;
}

function uploadErrors(err) {
  const issues = err instanceof ApiError && Array.isArray(err.body?.detail) ? err.body.detail : null;
  if (!issues) {
    const p = document.createElement("p");
    p.className = "error";
    p.textContent = `Upload failed: ${err.message}`;
    return p;
  }
  const table = document.createElement("table");
  table.className = "upload-errors";
  table.innerHTML = "<caption class='error'>The file was not stored:</caption><thead><tr><th>Row</th><th>Column</th><th>Problem</th></tr></thead>";
  const body = table.createTBody();
  for (const issue of issues) {
    const row = body.insertRow();
    for (const text of [issue.row ?? "—", issue.column ?? "—", issue.msg]) row.insertCell().textContent = String(text);
  }
  return table;
}

// the columns a preview lists in full; past that, the first ones and a count
const LISTED_COLUMNS = 40;

function message(text, className = "") {
  return Object.assign(document.createElement("p"), { className, textContent: text });
}

// the file and fields the user chose, as the upload and its preview both take them (null: no file)
function uploadData() {
  const file = document.getElementById("upload-file").files[0];
  if (!file) return null;
  const data = new FormData();
  data.append("file", file);
  const name = document.getElementById("upload-name").value.trim();
  const labelColumn = document.getElementById("upload-label").value.trim();
  if (name) data.append("name", name);
  if (labelColumn) data.append("label_column", labelColumn);
  return data;
}

function codeList(cell, names, describe = (name) => name) {
  const shown = names.slice(0, LISTED_COLUMNS);
  shown.forEach((name, i) => {
    if (i) cell.append(" ");
    cell.append(Object.assign(document.createElement("code"), { textContent: describe(name, i) }));
  });
  if (names.length > shown.length) cell.append(` … and ${names.length - shown.length} more`);
}

function renderPreview(d) {
  const node = document.getElementById("upload-preview-template").content.firstElementChild.cloneNode(true);
  const field = (name) => node.querySelector(`[data-field="${name}"]`);
  field("filename").textContent = d.filename;
  field("shape").textContent = `${d.rows.toLocaleString()} × ${d.n_features.toLocaleString()}`;
  field("classes").textContent = String(d.num_classes);
  const share = d.max_target_entropy > 0 ? Math.round((100 * d.target_entropy) / d.max_target_entropy) : 0;
  field("entropy").textContent =
    `${d.target_entropy.toFixed(3)} of ln ${d.num_classes} = ${d.max_target_entropy.toFixed(3)} nats (${share}% of uniform)`;
  field("sha256").textContent = d.sha256.slice(0, 12);
  field("sha256").title = d.sha256;
  field("feature-count").textContent = `(${d.feature_columns.length})`;
  codeList(node.querySelector("#preview-features"), d.feature_columns);
  const targets = node.querySelector("#preview-targets");
  if (d.target_kind === "label") {
    field("target-kind").textContent = "(one label column)";
    codeList(targets, d.target_columns);
    const more = d.class_names.length > LISTED_COLUMNS ? ", …" : "";
    targets.append(` with classes ${d.class_names.slice(0, LISTED_COLUMNS).join(", ")}${more}`);
  } else {
    field("target-kind").textContent = `(${d.target_columns.length} probability columns)`;
    // one column per class: name each column's class beside it when an array does not hold them all
    const perClass = d.target_columns.length === d.class_names.length;
    codeList(targets, d.target_columns, (name, i) => (perClass ? `${name} → ${d.class_names[i]}` : name));
  }
  const shares = node.querySelector("#preview-shares tbody");
  d.class_shares.slice(0, LISTED_COLUMNS).forEach((value, i) => {
    const row = shares.insertRow();
    row.insertCell().textContent = d.class_names[i] ?? String(i);
    row.insertCell().textContent = value.toFixed(3);
    const bar = Object.assign(document.createElement("meter"), { min: 0, max: 1, value });
    row.insertCell().append(bar);
  });
  if (d.class_shares.length > LISTED_COLUMNS) {
    shares.insertRow().insertCell().textContent = `… and ${d.class_shares.length - LISTED_COLUMNS} more classes`;
  }
  return node;
}

async function preview() {
  const result = document.getElementById("upload-result");
  const data = uploadData();
  if (!data) {
    result.replaceChildren(message("Choose a file first.", "error"));
    return;
  }
  result.textContent = "Reading…";
  try {
    const d = await postForm(document.getElementById("upload").dataset.previewUrl, data);
    result.replaceChildren(renderPreview(d));
    document.getElementById("upload-confirm").addEventListener("click", () => store(data, d));
    document.getElementById("upload-discard").addEventListener("click", () => result.replaceChildren());
  } catch (err) {
    result.replaceChildren(uploadErrors(err));
  }
}

// stores exactly the file that was previewed (the FormData holds the same File)
async function store(data, previewed) {
  const actions = document.querySelector("#upload-preview .upload-confirm");
  actions.replaceChildren(message("Storing…"));
  try {
    const d = await postForm(document.getElementById("upload").dataset.uploadUrl, data);
    const option = new Option(`#${d.id} ${d.name} — ${d.rows} rows × ${d.n_features} features, ${d.num_classes} classes (${d.target_kind})`, d.id, true, true);
    datasetSelect.querySelector("option[value='']")?.remove();
    datasetSelect.add(option);
    useDataset.disabled = false;
    useDataset.checked = true;
    syncDataSource();
    document.querySelector("#upload-preview h3 .muted").textContent = `(stored as dataset #${d.id})`;
    const changed = d.sha256 !== previewed.sha256 ? " The file changed since its preview: check the dataset." : "";
    actions.replaceChildren(message(`Stored dataset #${d.id} ${d.name}; it is selected above.${changed}`, changed ? "error" : ""));
  } catch (err) {
    actions.replaceChildren(uploadErrors(err));
  }
}

// --- edits against the preset: marked per field, counted at the top, and a preset switch asks first ---
function inputsOf(field) {
  const input = form.elements.namedItem(field);
  if (!input) return [];
  return (input instanceof RadioNodeList ? [...input] : [input]).filter((el) => el.type !== "hidden");
}

function currentValue(el) {
  return el.type === "checkbox" ? el.checked : el.value.trim();
}

function presetValue(el, value) {
  return el.type === "checkbox" ? Boolean(value) : String(value ?? "").trim();
}

// fields whose value is not the preset's: [field, preset value as text]
function edits(name) {
  const out = [];
  for (const [field, value] of Object.entries(presetValues[name] ?? {})) {
    for (const el of inputsOf(field)) {
      if (currentValue(el) !== presetValue(el, value)) out.push([field, el.type === "checkbox" ? (value ? "on" : "off") : String(value ?? "")]);
    }
  }
  return out;
}

function markEdits() {
  const changed = new Map(edits(shownPreset));
  for (const field of Object.keys(presetValues[shownPreset] ?? {})) {
    const box = inputsOf(field)[0]?.closest(".field");
    if (!box) continue;
    box.classList.toggle("differs", changed.has(field));
    let note = box.querySelector(".differs-note");
    if (changed.has(field)) {
      if (!note) {
        note = Object.assign(document.createElement("p"), { className: "differs-note" });
        box.querySelector("label").after(note);
      }
      const was = changed.get(field);
      note.textContent = `changed from ${shownPreset}'s ${was === "" ? "empty" : was}`;
    } else if (note) {
      note.remove();
    }
  }
  const n = changed.size;
  document.getElementById("preset-diff-count").textContent = n ? `${n} field${n > 1 ? "s" : ""} differ from ${shownPreset}` : "";
}

let shownPreset = presetSelect.value;
presetSelect.addEventListener("change", () => {
  const lost = edits(shownPreset);
  if (lost.length) {
    const names = lost.map(([field]) => field).join(", ");
    if (!window.confirm(`Switch to ${presetSelect.value}? It replaces your ${lost.length} edit${lost.length > 1 ? "s" : ""} (${names}).`)) {
      presetSelect.value = shownPreset;
      return;
    }
  }
  shownPreset = presetSelect.value;
  fillFromPreset(shownPreset);
  markEdits();
});
form.addEventListener("input", markEdits);
form.addEventListener("change", markEdits);
markEdits();

// Enter in a text field does not send the form: only the Queue run buttons do
form.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && event.target instanceof HTMLInputElement && event.target.type !== "submit") {
    event.preventDefault();
  }
});
form.addEventListener("change", (event) => { if (event.target.name === "data_source") syncDataSource(); });
document.getElementById("upload-button").addEventListener("click", preview);
// a preview describes the file and label column it was made with: changing either drops it
for (const id of ["upload-file", "upload-label"]) {
  document.getElementById(id).addEventListener("change", () => document.getElementById("upload-result").replaceChildren());
}
syncDataSource();
