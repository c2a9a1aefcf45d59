// Doctor mode's lineage in the run header (templates/runs/_doctor.html): while the doctor is at work it is
// read again every 3 s from the header partial, so the stop, the attempt the doctor queues next and its final
// verdict appear without a reload, also once this run itself has ended (its own status no longer changes).

import { getHTML } from "./api.js";

const POLL_MS = 3000;

async function poll() {
  const tree = document.getElementById("doctor");
  if (!tree || tree.dataset.state !== "in progress") return;
  try {
    const box = document.createElement("div");
    box.innerHTML = await getHTML(tree.dataset.refreshUrl);
    const fresh = box.querySelector("#doctor");
    // the run page may have replaced the whole header meanwhile: swap whatever tree is there now, if it changed
    // (an unchanged tree stays, and with it a focused link or text being selected)
    const current = document.getElementById("doctor");
    if (fresh && current && fresh.outerHTML !== current.outerHTML) current.replaceWith(fresh);
  } catch {
    // a restarting server: the next poll tries again
  }
  setTimeout(poll, POLL_MS);
}

setTimeout(poll, POLL_MS);
