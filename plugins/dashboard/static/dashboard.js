// transcribe-gateway dashboard: the only script of its pages (no framework, nothing fetched
// from elsewhere). It adds, to pages that work without it:
//  - drag and drop onto the upload form;
//  - live parts: an element with data-poll="<url>" and data-live="1" is fetched again every
//    POLL_MS from the dashboard's own fragment routes (session cookie + CSRF header) and
//    replaced by the server-rendered, server-escaped HTML; it stops once data-live is "0";
//  - the transcript: a click on a segment seeks the player there; the segment being played is
//    highlighted (binary search over the start times: long transcripts stay cheap); a click on
//    a speaker turn of the timeline plays from its start.
"use strict";

const POLL_MS = 1000;

function csrfToken() {
  const meta = document.querySelector('meta[name="csrf-token"]');
  return meta ? meta.content : "";
}

function setUpDrop() {
  const input = document.querySelector('input[type="file"][name="file"]');
  const zone = document.querySelector(".drop");
  const name = document.getElementById("file-name");
  if (!input || !zone) return;
  const show = () => { if (name) name.textContent = input.files.length ? input.files[0].name : ""; };
  input.addEventListener("change", show);
  show(); // a file chosen before this script ran
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    if (e.dataTransfer && e.dataTransfer.files.length) {
      input.files = e.dataTransfer.files;
      show();
    }
  });
}

async function refresh(el) {
  let response;
  try {
    response = await fetch(el.dataset.poll, { headers: { "X-CSRF-Token": csrfToken() }, credentials: "same-origin" });
  } catch (err) {
    return el; // the gateway is restarting, or the network is down: try again later
  }
  if (!response.ok) return el;
  const doc = new DOMParser().parseFromString(await response.text(), "text/html");
  const fresh = doc.body.firstElementChild;
  if (!fresh || fresh.id !== el.id) return el;
  const adopted = document.importNode(fresh, true);
  el.replaceWith(adopted);
  if (adopted.querySelector("#segments")) setUpTranscript();
  return adopted;
}

function poll(id) {
  const tick = async () => {
    const el = document.getElementById(id);
    if (!el || el.dataset.live !== "1") return;
    const now = await refresh(el);
    if (now.dataset.live === "1") setTimeout(tick, POLL_MS);
  };
  setTimeout(tick, POLL_MS);
}

function setUpLive() {
  document.querySelectorAll("[data-poll][data-live='1']").forEach((el) => poll(el.id));
}

function setUpTranscript() {
  const player = document.getElementById("player");
  const list = document.getElementById("segments");
  if (!player || !list || list.dataset.ready) return;
  list.dataset.ready = "1";
  const segs = Array.from(list.querySelectorAll("li.seg"));
  const starts = segs.map((li) => parseFloat(li.dataset.start));
  let current = null;

  list.addEventListener("click", (e) => {
    const li = e.target.closest("li.seg");
    if (!li || (e.target.closest(".text") && window.getSelection().toString())) return;
    player.currentTime = parseFloat(li.dataset.start);
    player.play().catch(() => {});
  });

  const timeline = document.getElementById("timeline"); // a click on a speaker turn plays from it
  if (timeline) timeline.addEventListener("click", (e) => {
    const bar = e.target.closest("rect[data-start]");
    if (!bar) return;
    player.currentTime = parseFloat(bar.dataset.start);
    player.play().catch(() => {});
  });

  const at = (t) => { // the last segment starting at or before t
    let lo = 0, hi = starts.length - 1, found = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (starts[mid] <= t) { found = mid; lo = mid + 1; } else { hi = mid - 1; }
    }
    return found;
  };
  const highlight = () => {
    const i = at(player.currentTime);
    const li = i >= 0 && player.currentTime <= parseFloat(segs[i].dataset.end) + 0.05 ? segs[i] : null;
    if (li === current) return;
    if (current) { current.classList.remove("playing"); current.removeAttribute("aria-current"); }
    current = li;
    if (li) {
      li.classList.add("playing");
      li.setAttribute("aria-current", "true");
      if (!player.paused) li.scrollIntoView({ block: "nearest" });
    }
  };
  player.addEventListener("timeupdate", highlight);
  player.addEventListener("seeked", highlight);

  const start = parseFloat(player.dataset.start || "0");
  if (start > 0) {
    const seek = () => { player.currentTime = start; highlight(); };
    if (player.readyState >= 1) seek(); else player.addEventListener("loadedmetadata", seek, { once: true });
    const i = at(start);
    if (i >= 0) segs[i].scrollIntoView({ block: "center" });
  }
}

// forms with data-confirm (delete, cancel) are sent only once the person confirms; on the
// document, so forms of fragments replaced while polling are covered too
function setUpConfirm() {
  document.addEventListener("submit", (e) => {
    const form = e.target.closest("form[data-confirm]");
    if (form && !window.confirm(form.dataset.confirm)) e.preventDefault();
  });
}

document.addEventListener("DOMContentLoaded", () => {
  setUpConfirm();
  setUpDrop();
  setUpLive();
  setUpTranscript();
});
