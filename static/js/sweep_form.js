// New-sweep form: rows of the search-space editor are added and removed in place, and each row shows the
// inputs its kind reads (low and high for a range, a step too for a stepped one, the list for choices). A field
// that is not a number (text, on/off, a list) can only be searched over choices, so picking one selects them;
// the chosen preset's description is shown.

const form = document.getElementById("sweep-form");
const rows = document.getElementById("space-rows");
const template = document.getElementById("space-row-template");
const NUMERIC = new Set(["int", "float", "float | None"]);
let made = rows.querySelectorAll("[data-row]").length; // new rows' ids go on from here

function syncRow(row) {
  const kind = row.querySelector("[name=space_kind]").value;
  row.dataset.kind = kind;
  for (const part of row.querySelectorAll("[data-for]")) {
    const usedBy = part.dataset.for;
    part.hidden = usedBy === "choices" ? kind !== "choices" : kind === "choices" || (usedBy === "step" && kind !== "step");
  }
}

function addRow() {
  made += 1;
  const row = template.content.firstElementChild.cloneNode(true);
  for (const el of row.querySelectorAll("[id^='space-0-']")) el.id = el.id.replace("space-0-", `space-${made}-`);
  rows.append(row);
  syncRow(row);
  row.querySelector("[name=space_field]").focus();
}

rows.addEventListener("change", (event) => {
  const row = event.target.closest("[data-row]");
  if (!row) return;
  if (event.target.name === "space_field") {
    const type = event.target.selectedOptions[0]?.dataset.type;
    if (type && !NUMERIC.has(type)) row.querySelector("[name=space_kind]").value = "choices";
  }
  syncRow(row);
});

rows.addEventListener("click", (event) => {
  if (!event.target.closest(".remove-row")) return;
  event.target.closest("[data-row]").remove();
  if (!rows.querySelector("[data-row]")) addRow();
});

document.getElementById("add-row").addEventListener("click", addRow);
document.getElementById("preset").addEventListener("change", (event) => {
  document.querySelectorAll(".preset-description").forEach((p) => { p.hidden = p.dataset.preset !== event.target.value; });
});
// Enter in a text field does not start the sweep: only the Start sweep buttons do
form.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && event.target instanceof HTMLInputElement) event.preventDefault();
});
rows.querySelectorAll("[data-row]").forEach(syncRow);
