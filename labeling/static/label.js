// The labeling page. Plain script, no build step. Model text is only ever set with textContent: a response
// may hold markup, and it must show as text, never run.
"use strict";

const $ = (id) => document.getElementById(id);
const LETTERS = "ABCDEFGHI";
const FOLD_CHARS = 600;
const FOLD_LINES = 10;

let csrf = "";
let config = { metadata: [], flags: [] };
// The item on screen. order: shown positions best first; tied[p]: shown position p is tied with the one above
// it; likert[p] and meta[field][p] per shown position. The server maps shown positions back to the batch's.
let item = null;
let order = [];
let tied = [];
let likert = [];
let meta = {};
let focusAt = 0;
let shownAt = 0;
let busy = false;

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function setStatus(text, kind) {
  const status = $("status");
  status.textContent = text;
  status.className = kind || "";
}

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST", body: JSON.stringify(body),
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
  };
  const response = await fetch(path, { credentials: "same-origin", cache: "no-store", ...options });
  let payload = {};
  try { payload = await response.json(); } catch (e) { payload = {}; }
  if (!response.ok) throw new Error(payload.error || `${response.status} ${response.statusText}`);
  return payload;
}

function ranksOf() {
  // Dense ranks per shown position: 1 = best, a response tied with the one above shares its rank.
  const ranks = new Array(order.length);
  let rank = 0;
  order.forEach((p, i) => { if (i === 0 || !tied[p]) rank += 1; ranks[p] = rank; });
  return ranks;
}

function show(state) {
  csrf = state.csrf;
  config = state;
  buildFlags(state.flags);
  const p = state.progress;
  $("progress").textContent = `${p.done} done · ${p.remaining} remaining of ${p.assigned}`;
  $("undo").disabled = !state.undo;
  const next = state.item;
  $("item").hidden = !next;
  $("done").hidden = !!next;
  if (!next) { item = null; return; }
  if (item && item.item_id === next.item_id) return;  // same item: keep the work on screen
  item = next;
  const k = next.k;
  order = [...Array(k).keys()];
  tied = new Array(k).fill(false);
  likert = new Array(k).fill(0);
  meta = Object.fromEntries(state.metadata.map((f) => [f, new Array(k).fill(false)]));
  focusAt = 0;
  shownAt = performance.now();
  $("note").value = "";
  $("skip-reason").value = "";
  $("other").open = false;
  for (const box of $("flags").querySelectorAll("input")) box.checked = false;
  if (next.previous) restore(next.previous);
  buildItem(next);
  render();
  window.scrollTo(0, 0);
}

function restore(previous) {
  // An undone answer comes back as it was, to be fixed rather than redone.
  if (previous.event === "rank") {
    const ranks = previous.ranks;
    order.sort((a, b) => ranks[a] - ranks[b] || a - b);
    order.forEach((p, i) => { tied[p] = i > 0 && ranks[order[i - 1]] === ranks[p]; });
    likert = [...previous.likert];
    for (const [field, values] of Object.entries(previous.metadata)) if (field in meta) meta[field] = [...values];
  }
  $("note").value = previous.note || "";
  if (previous.event === "skip") { $("skip-reason").value = previous.reason; $("other").open = true; }
  if (previous.event === "flag") {
    for (const box of $("flags").querySelectorAll("input")) box.checked = previous.flags.includes(box.value);
    $("other").open = true;
  }
}

function buildItem(next) {
  const context = $("context");
  context.replaceChildren();
  for (const turn of next.context) {
    const div = el("div", { class: "turn" });
    div.append(el("span", { class: "role" }, `${turn.role}: `), el("span", { class: "text" }, turn.content));
    context.append(div);
  }
  $("prompt").textContent = next.prompt;
  const list = $("responses");
  list.replaceChildren(...next.responses.map((text, p) => card(text, p)));
}

function buildFlags(flags) {
  // Once per page: the flags are the server's (label.flags), the same for every item.
  const fieldset = $("flags");
  if (fieldset.querySelector("input")) return;
  for (const flag of flags) {
    const label = el("label");
    label.append(el("input", { type: "checkbox", value: flag }), document.createTextNode(` ${flag.replaceAll("_", " ")} `));
    fieldset.append(label);
  }
}

function card(text, p) {
  const li = el("li", { class: "response", tabindex: "0", "data-pos": String(p) });
  const bar = el("div", { class: "bar" });
  const handle = el("span", { class: "handle", title: "drag to move", "aria-hidden": "true" }, "⠿");
  handle.addEventListener("pointerdown", (e) => startDrag(e, p));
  const likertBox = el("span", { class: "likert", role: "group", title: "overall quality: 1 bad, 7 excellent",
    "aria-label": "overall quality from 1 (bad) to 7 (excellent)" });
  likertBox.append(el("span", {}, "score"));
  for (let v = 1; v <= 7; v++) {
    const b = el("button", { type: "button", "data-score": String(v), "aria-pressed": "false" }, String(v));
    b.addEventListener("click", () => { likert[p] = v; render(); });
    likertBox.append(b);
  }
  bar.append(handle, el("span", { class: "rank" }), el("span", { class: "tie-mark" }), el("span", { class: "name" },
    `Response ${LETTERS[p]}`), likertBox);
  const body = el("div", { class: "text" }, text);
  li.append(bar, body);
  if (text.length > FOLD_CHARS || text.split("\n").length > FOLD_LINES) {
    body.classList.add("folded");
    const fold = el("button", { type: "button", class: "fold" }, "show all");
    fold.addEventListener("click", () => toggleFold(li));
    li.append(fold);
  }
  const details = el("details", { class: "meta" });
  details.append(el("summary", {}, "metadata"));
  for (const field of config.metadata) {
    const label = el("label");
    const box = el("input", { type: "checkbox", "data-field": field });
    box.checked = meta[field][p];
    box.addEventListener("change", () => { meta[field][p] = box.checked; });
    label.append(box, document.createTextNode(` ${field.replaceAll("_", " ")}`));
    details.append(label);
  }
  li.append(details);
  li.addEventListener("focus", () => { focusAt = order.indexOf(p); });
  return li;
}

function toggleFold(li) {
  const body = li.querySelector(".text");
  const folded = body.classList.toggle("folded");
  li.querySelector(".fold").textContent = folded ? "show all" : "fold";
}

function cards() {
  return new Map([...$("responses").children].map((li) => [Number(li.dataset.pos), li]));
}

function render(keepFocus) {
  const byPos = cards();
  const ranks = ranksOf();
  const list = $("responses");
  order.forEach((p, i) => {
    const li = byPos.get(p);
    if (list.children[i] !== li) list.insertBefore(li, list.children[i] || null);
    const isTied = i > 0 && tied[p];
    li.classList.toggle("tied", isTied);
    li.querySelector(".rank").textContent = String(ranks[p]);
    li.querySelector(".tie-mark").textContent = isTied ? "= tied with above" : "";
    li.setAttribute("aria-label", `Response ${LETTERS[p]}, place ${ranks[p]}${isTied ? ", tied" : ""}`);
    for (const b of li.querySelectorAll(".likert button")) {
      b.setAttribute("aria-pressed", String(Number(b.dataset.score) === likert[p]));
    }
  });
  if (!keepFocus && document.activeElement && document.activeElement.closest("#responses")) {
    byPos.get(order[focusAt]).focus();
  }
}

// A move changes who is above whom: ties only stay between neighbours that did not change.
function move(from, to) {
  if (to < 0 || to >= order.length || to === from) return;
  const [p] = order.splice(from, 1);
  if (from < order.length) tied[order[from]] = false;
  order.splice(to, 0, p);
  tied[p] = false;
  if (to + 1 < order.length) tied[order[to + 1]] = false;
  focusAt = to;
}

let drag = null;

function startDrag(e, p) {
  if (e.button !== 0 || busy) return;
  e.preventDefault();
  const li = cards().get(p);
  li.classList.add("dragging");
  li.focus();
  drag = { p, li };
  window.addEventListener("pointermove", onDrag);
  window.addEventListener("pointerup", endDrag);
  window.addEventListener("pointercancel", endDrag);
}

function onDrag(e) {
  if (!drag) return;
  // The place is how many of the other cards have their middle above the pointer.
  let to = 0;
  for (const [p, li] of cards()) {
    if (p === drag.p) continue;
    const box = li.getBoundingClientRect();
    if (box.top + box.height / 2 < e.clientY) to += 1;
  }
  const from = order.indexOf(drag.p);
  if (to !== from) { move(from, to); render(true); }
}

function endDrag() {
  if (!drag) return;
  drag.li.classList.remove("dragging");
  focusAt = order.indexOf(drag.p);
  drag.li.focus();
  drag = null;
  window.removeEventListener("pointermove", onDrag);
  window.removeEventListener("pointerup", endDrag);
  window.removeEventListener("pointercancel", endDrag);
}

async function post(path, body) {
  if (busy) return;
  busy = true;
  setStatus("saving…");
  try {
    const reply = await api(path, body);
    // "saved" only now: the server answers after the label is on disk.
    setStatus(`saved (#${reply.saved.seq}, ${reply.saved.event})`, "saved");
    item = null;
    show(reply.state);
    const first = $("responses").children[0];
    if (first && reply.state.item) first.focus();
  } catch (err) {
    setStatus(`not saved: ${err.message}`, "error");
  } finally {
    busy = false;
  }
}

function seconds() {
  return Math.round((performance.now() - shownAt) / 100) / 10;
}

function submitRanking() {
  if (!item) return;
  const ranks = ranksOf();
  if (new Set(ranks).size === 1) { setStatus("all responses are tied: rank them or skip the item", "error"); return; }
  const missing = order.filter((p) => !likert[p]).map((p) => LETTERS[p]);
  if (missing.length) { setStatus(`score every response 1–7 (missing: ${missing.join(", ")})`, "error"); return; }
  post("/api/rank", { item_id: item.item_id, ranks, likert, metadata: meta, note: $("note").value, seconds: seconds() });
}

function skipItem() {
  const reason = $("skip-reason").value.trim();
  if (!reason) { setStatus("say why you skip it", "error"); $("other").open = true; $("skip-reason").focus(); return; }
  post("/api/skip", { item_id: item.item_id, reason, seconds: seconds() });
}

function flagItem() {
  const flags = [...$("flags").querySelectorAll("input:checked")].map((b) => b.value);
  if (!flags.length) { setStatus("tick a flag first", "error"); $("other").open = true; return; }
  post("/api/flag", { item_id: item.item_id, flags, note: $("note").value, seconds: seconds() });
}

function undo() {
  post("/api/undo", {});
}

function toggleHelp() {
  const help = $("help");
  if (help.open) help.close(); else help.showModal();
}

function onKey(e) {
  if (e.key === "?" && !isTyping(e.target)) { e.preventDefault(); toggleHelp(); return; }
  if ($("help").open || e.ctrlKey || e.metaKey || isTyping(e.target)) return;
  if (e.key === "u") { e.preventDefault(); undo(); return; }
  if (!item || busy) return;
  const onCard = e.target.closest && e.target.closest(".response");
  const digit = /^(Digit|Numpad)([1-9])$/.exec(e.code);
  const p = order[focusAt];
  if (digit && e.shiftKey) {
    const v = Number(digit[2]);
    if (v <= 7) { likert[p] = v; render(); }
  } else if (digit) {
    move(focusAt, Math.min(Number(digit[2]), order.length) - 1);
    render();
  } else if (e.key === "ArrowUp" || e.key === "ArrowDown") {
    const step = e.key === "ArrowUp" ? -1 : 1;
    if (e.shiftKey || e.altKey) move(focusAt, focusAt + step);
    else focusAt = Math.max(0, Math.min(order.length - 1, focusAt + step));
    render();
    cards().get(order[focusAt]).focus();
  } else if (e.key === "t" || e.key === "=") {
    if (focusAt > 0) { tied[p] = !tied[p]; render(); }
  } else if (e.key === "m") {
    const details = cards().get(p).querySelector(".meta");
    details.open = !details.open;
  } else if (e.key === "o") {
    if (cards().get(p).querySelector(".fold")) toggleFold(cards().get(p));
  } else if (e.key === "Enter" && (onCard || e.target === document.body)) {
    submitRanking();
  } else {
    return;
  }
  e.preventDefault();
}

function isTyping(target) {
  return target && (target.tagName === "TEXTAREA" || (target.tagName === "INPUT" && target.type !== "checkbox"));
}

async function start() {
  $("submit").addEventListener("click", submitRanking);
  $("skip").addEventListener("click", skipItem);
  $("flag").addEventListener("click", flagItem);
  $("undo").addEventListener("click", undo);
  $("help-open").addEventListener("click", toggleHelp);
  $("help-close").addEventListener("click", () => $("help").close());
  document.addEventListener("keydown", onKey);
  try {
    show(await api("/api/state"));
    const first = $("responses").children[0];
    if (first && item) first.focus();
  } catch (err) {
    $("signed-out").hidden = false;
    setStatus(err.message, "error");
  }
}

start();
