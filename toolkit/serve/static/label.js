// clipkit labelling page: one image at a time in "what to label next" order, the suggestion pre-selected.
// Keys: 1-9 pick a class, Enter accepts the suggestion, 0 or n none of these, s skip, u undo.
"use strict";

const $ = (id) => document.getElementById(id);
let current = null;   // the state from the server
let busy = false;     // one request at a time: keys pressed meanwhile are dropped, never sent twice

async function call(path, body) {
  const resp = await fetch(path, body === undefined ? {} :
    { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  let data = null;
  try { data = await resp.json(); } catch (e) { data = null; }
  if (!resp.ok) {
    const detail = data && (data.error ? data.error.message : data.detail);
    throw new Error(typeof detail === "string" ? detail : `HTTP ${resp.status}`);
  }
  return data;
}

function showError(message) {
  $("error").textContent = message || "";
  $("error").hidden = !message;
}

const pct = (x) => `${(100 * x).toFixed(1)}%`;

function render(s) {
  current = s;
  $("standing").textContent = s.standing.line + (s.fresh ? "" : " · refitting…");
  $("progress").textContent = `· ${s.n_labelled} labelled, ${s.n_none} none, ${s.n_skipped} skipped of ${s.n_images}`;
  $("csv").textContent = s.csv;
  $("train").textContent = s.train_command;
  $("notes").textContent = (s.notes || []).join(" · ");
  $("undo").disabled = !s.can_undo;
  const counts = $("counts");
  counts.replaceChildren(...s.classes.map((c) => {
    const li = document.createElement("li");
    li.textContent = `${c}: ${s.counts[c]}`;
    return li;
  }));
  const item = s.item;
  $("done").hidden = item !== null;
  for (const id of ["accept", "none", "skip"]) $(id).disabled = item === null;
  const list = $("choices");
  if (item === null) {
    $("image").removeAttribute("src");
    $("image-name").textContent = "";
    list.replaceChildren();
    return;
  }
  $("image").src = `/image/${item.row}`;
  $("image").alt = item.name;
  $("image-name").textContent = item.name + (item.current ? ` (labelled ${item.current})` : "");
  const score = Object.fromEntries(item.scores.map((t) => [t.label, t.score]));
  list.replaceChildren(...s.classes.map((c, i) => {
    const li = document.createElement("li");
    li.className = "choice" + (c === item.suggestion ? " suggested" : "");
    li.dataset.label = c;
    const key = document.createElement("span");
    key.className = "key";
    key.textContent = i < 9 ? String(i + 1) : "";
    const name = document.createElement("span");
    name.className = "choice-label";
    name.textContent = c;
    const p = document.createElement("span");
    p.className = "pct";
    p.textContent = pct(score[c] || 0);
    const track = document.createElement("div");
    track.className = "bar-track";
    const fill = document.createElement("div");
    fill.className = "bar-fill";
    fill.style.width = pct(score[c] || 0);
    track.append(fill);
    li.append(key, name, p, track);
    li.addEventListener("click", () => send(c));
    return li;
  }));
  $("accept").textContent = `Accept "${item.suggestion}" ${pct(item.score)} ⏎`;
}

let sent = 0, shown = 0;  // request numbers: a late reply never replaces a newer one

async function run(path, body, poll = false) {
  if (busy) return;
  const seq = ++sent;
  if (!poll) busy = true;
  try {
    const s = await call(path, body);
    // a background poll brings the refitted head's standing and order, but never swaps the image in front of
    // the person (a key pressed a moment later would label another image than the one they looked at)
    if (poll && current && current.item && s.item && s.item.row !== current.item.row) s.item = current.item;
    if (seq >= shown) { shown = seq; render(s); showError(""); }
  } catch (e) {
    showError(e.message);
  } finally {
    if (!poll) busy = false;
  }
}

function send(answer) {
  if (!current || !current.item) return;
  return run("/api/answer", { row: current.item.row, answer });
}

document.addEventListener("keydown", (ev) => {
  if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const k = ev.key;
  if (k >= "1" && k <= "9") {
    const c = current && current.classes[Number(k) - 1];
    if (c) send(c);
  } else if (k === "Enter") {
    if (current && current.item) send(current.item.suggestion);
  } else if (k === "0" || k === "n") {
    send("none");
  } else if (k === "s") {
    send("skip");
  } else if (k === "u") {
    run("/api/undo", {});
  } else {
    return;
  }
  ev.preventDefault();
});

$("accept").addEventListener("click", () => current && current.item && send(current.item.suggestion));
$("none").addEventListener("click", () => send("none"));
$("skip").addEventListener("click", () => send("skip"));
$("undo").addEventListener("click", () => run("/api/undo", {}));
run("/api/state");
// the head refits in the background: pick up its new standing and order now and then
setInterval(() => { if (!busy && current && !current.fresh) run("/api/state", undefined, true); }, 2000);
