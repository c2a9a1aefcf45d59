// Runs list: re-fetch the rows partial every 2 s (the same template and query as the first load), keeping
// the runs picked for comparison; "Compare selected" opens the compare page for them. Each row's Edit
// opens a dialog that renames the run and sets its tags and notes (PATCH), Delete asks first (DELETE).

import { ApiError, getHTML, getJSON, sendJSON } from "./api.js";

const table = document.getElementById("runs-table");
const button = document.getElementById("compare-button");
const picked = new Set();

const write = sendJSON; // (method, url, payload)

// --- picking runs to compare -------------------------------------------------------------------------
function updateButton() {
  button.disabled = picked.size < 2;
  button.textContent = picked.size ? `Compare selected (${picked.size})` : "Compare selected";
}

table.addEventListener("change", (event) => {
  const box = event.target.closest("input.pick");
  if (!box) return;
  if (box.checked) picked.add(box.value);
  else picked.delete(box.value);
  updateButton();
});

button.addEventListener("click", () => {
  const url = new URL(button.dataset.compareUrl, window.location.href);
  url.searchParams.set("ids", [...picked].sort((a, b) => a - b).join(","));
  window.location.assign(url);
});

// --- live rows ---------------------------------------------------------------------------------------
let timer = null;
let loading = null;

async function load() {
  try {
    const html = await getHTML(table.dataset.rowsUrl);
    const holder = document.createElement("table");
    holder.innerHTML = html;
    const fresh = holder.querySelector("#runs-body");
    if (!fresh) return;
    fresh.querySelectorAll("input.pick").forEach((input) => { input.checked = picked.has(input.value); });
    document.getElementById("runs-body").replaceWith(fresh);
    const total = Number(fresh.dataset.total);
    const count = document.getElementById("runs-count");
    count.textContent = count.textContent.replace(/^\d+ runs?/, `${total} run${total === 1 ? "" : "s"}`);
  } catch {
    // the server may be restarting; the next tick tries again
  }
}

// one load at a time, then the next in 2 s; after a write, `fresh` waits out a load that started before it
async function refresh({ fresh = false } = {}) {
  if (loading && fresh) await loading;
  if (!loading) {
    clearTimeout(timer);
    loading = load().finally(() => {
      loading = null;
      timer = setTimeout(refresh, 2000);
    });
  }
  return loading;
}

// --- edit and delete dialogs ------------------------------------------------------------------------
const editDialog = document.getElementById("edit-dialog");
const editForm = document.getElementById("edit-form");
const editError = document.getElementById("edit-error");
const deleteDialog = document.getElementById("delete-dialog");
const deleteForm = document.getElementById("delete-form");
const deleteError = document.getElementById("delete-error");
let target = null; // { id, url } of the run a dialog is about

const splitTags = (text) => text.split(/[\s,]+/).filter(Boolean);

function showError(box, err) {
  box.textContent = err instanceof ApiError ? err.message : `Could not reach the server: ${err.message}`;
  box.hidden = false;
}

for (const dialog of [editDialog, deleteDialog]) {
  dialog.querySelectorAll("[data-close]").forEach((b) => b.addEventListener("click", () => dialog.close()));
}

async function openEdit(row) {
  target = { id: row.dataset.runId, url: row.dataset.apiUrl };
  editError.hidden = true;
  const run = await getJSON(target.url); // the stored values, not what the row showed 2 s ago
  editForm.elements.name.value = run.name;
  editForm.elements.tags.value = run.tags.join(" ");
  editForm.elements.notes.value = run.notes;
  document.getElementById("edit-title").textContent = `Edit run #${run.id}`;
  editDialog.showModal();
  editForm.elements.name.select();
}

editForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const save = document.getElementById("edit-save");
  save.disabled = true;
  try {
    const { name, tags, notes } = editForm.elements;
    await write("PATCH", target.url, { name: name.value, tags: splitTags(tags.value), notes: notes.value });
    editDialog.close();
    await refresh({ fresh: true });
  } catch (err) {
    showError(editError, err);
  } finally {
    save.disabled = false;
  }
});

function openDelete(row) {
  target = { id: row.dataset.runId, url: row.dataset.apiUrl };
  deleteError.hidden = true;
  const running = row.dataset.status === "running" ? " It is running: it will be stopped." : "";
  document.getElementById("delete-message").textContent = `Delete run #${target.id} “${row.dataset.name}”?${running}`;
  deleteDialog.showModal();
}

deleteForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const confirm = document.getElementById("delete-confirm");
  confirm.disabled = true;
  try {
    await write("DELETE", target.url);
    picked.delete(target.id);
    updateButton();
    deleteDialog.close();
    await refresh({ fresh: true });
  } catch (err) {
    showError(deleteError, err);
  } finally {
    confirm.disabled = false;
  }
});

table.addEventListener("click", (event) => {
  const action = event.target.closest("button.edit, button.delete");
  if (!action) return;
  const row = action.closest("tr[data-run-id]");
  if (action.classList.contains("edit")) openEdit(row).catch((err) => { showError(editError, err); editDialog.showModal(); });
  else openDelete(row);
});

// the browser may restore ticked boxes on back/forward navigation
table.querySelectorAll("input.pick:checked").forEach((input) => picked.add(input.value));
updateButton();
timer = setTimeout(refresh, 2000);
