// New-run form: a preset fills every field with its values; the data source toggles the synthetic
// fields; a dataset can be uploaded in place, with its row and column errors shown.

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

async function upload() {
  const result = document.getElementById("upload-result");
  const file = document.getElementById("upload-file").files[0];
  if (!file) {
    result.replaceChildren(Object.assign(document.createElement("p"), { className: "error", textContent: "Choose a file first." }));
    return;
  }
  const data = new FormData();
  data.append("file", file);
  const name = document.getElementById("upload-name").value.trim();
  const labelColumn = document.getElementById("upload-label").value.trim();
  if (name) data.append("name", name);
  if (labelColumn) data.append("label_column", labelColumn);
  result.textContent = "Uploading…";
  try {
    const d = await postForm(document.getElementById("upload").dataset.uploadUrl, data);
    const option = new Option(`#${d.id} ${d.name} — ${d.rows} rows × ${d.n_features} features, ${d.num_classes} classes (${d.target_kind})`, d.id, true, true);
    datasetSelect.querySelector("option[value='']")?.remove();
    datasetSelect.add(option);
    useDataset.disabled = false;
    useDataset.checked = true;
    syncDataSource();
    result.textContent = `Stored dataset #${d.id} ${d.name}; it is selected above.`;
  } catch (err) {
    result.replaceChildren(uploadErrors(err));
  }
}

presetSelect.addEventListener("change", () => fillFromPreset(presetSelect.value));
form.addEventListener("change", (event) => { if (event.target.name === "data_source") syncDataSource(); });
document.getElementById("upload-button").addEventListener("click", upload);
syncDataSource();
