// Runs list: re-fetch the rows partial every 2 s (the same template as the first load), keeping the
// runs picked for comparison; "Compare selected" opens the compare page for them.

import { getHTML } from "./api.js";

const table = document.getElementById("runs-table");
const button = document.getElementById("compare-button");
const picked = new Set();

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

async function refresh() {
  try {
    const html = await getHTML(table.dataset.rowsUrl);
    const holder = document.createElement("table");
    holder.innerHTML = html;
    const fresh = holder.querySelector("#runs-body");
    if (!fresh) return;
    fresh.querySelectorAll("input.pick").forEach((input) => { input.checked = picked.has(input.value); });
    document.getElementById("runs-body").replaceWith(fresh);
    const total = Number(fresh.dataset.total);
    document.getElementById("runs-count").textContent = `${total} run${total === 1 ? "" : "s"}`;
  } catch {
    // the server may be restarting; the next tick tries again
  } finally {
    setTimeout(refresh, 2000);
  }
}

// the browser may restore ticked boxes on back/forward navigation
table.querySelectorAll("input.pick:checked").forEach((input) => picked.add(input.value));
updateButton();
setTimeout(refresh, 2000);
