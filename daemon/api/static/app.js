// promptd's review page: analyse an upload (a stream of stages), browse and edit the inbox.
// Plain JavaScript, no build step. Every request goes to this page's own origin; the API's
// token, when one is set, is asked for once and kept for this tab only (sessionStorage).
"use strict";

const $ = (id) => document.getElementById(id);
const LIMIT = 48;
const TOKEN_WINDOW = 75;
const STATUSES = ["all", "ok", "degraded", "error", "held", "pending"];
const state = {
  token: sessionStorage.getItem("promptd-token") || "",
  file: null,
  status: "all",
  q: "",
  sort: "name",
  offset: 0,
  total: 0,
  urls: [],
  item: null,
  preview: null,
};

// --- talking to the API --------------------------------------------------------------------

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  headers.set("X-Promptd-Client", "review-page");
  if (state.token) headers.set("Authorization", "Bearer " + state.token);
  const answer = await fetch(path, { ...options, headers });
  if (answer.status === 401) {
    $("token-bar").hidden = false;
    throw new Error("promptd needs its API token");
  }
  return answer;
}

async function json(path, options) {
  const answer = await api(path, options);
  const body = await answer.json().catch(() => ({}));
  if (!answer.ok) {
    const message = (body.error && body.error.message) || answer.statusText;
    throw new Error(message);
  }
  return body;
}

function send(method, body) {
  return { method, headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
}

// --- tabs and health -----------------------------------------------------------------------

function show(view) {
  for (const tab of document.querySelectorAll(".tabs button")) {
    const on = tab.dataset.view === view;
    tab.setAttribute("aria-selected", String(on));
    $("view-" + tab.dataset.view).hidden = !on;
  }
  if (view === "gallery") loadGallery();
}

async function health() {
  try {
    const h = await json("/health");
    const parts = [`queue ${h.queue.folder}`, `ollama ${h.ollama.state}`, `CLIP ${h.clip.loaded ? "ready" : "not loaded"}`];
    $("health").textContent = parts.join(" · ");
    $("health").className = "health " + (h.status === "ok" ? "good" : "warn");
  } catch (err) {
    $("health").textContent = "promptd is not answering";
    $("health").className = "health bad";
  }
}

// --- analyze an upload ---------------------------------------------------------------------

function choose(file) {
  if (!file) return;
  state.file = file;
  const reader = new FileReader();
  reader.onload = () => {
    $("preview").src = reader.result;
    $("preview").hidden = false;
    $("drop-text").textContent = file.name;
  };
  reader.readAsDataURL(file);
  $("analyze").disabled = false;
}

function stage(name, status) {
  const order = ["analyzing", "analyzed", "generating", "complete"];
  const at = order.indexOf(name);
  for (const li of $("stages").children) {
    const i = order.indexOf(li.dataset.stage);
    li.className = i < at ? "done" : i === at ? status : "";
  }
}

function resetResult() {
  for (const li of $("stages").children) li.className = "";
  $("analyze-error").hidden = true;
  $("prompt-block").hidden = true;
  $("analysis-block").hidden = true;
}

function renderAnalysis(analysis) {
  const box = $("analysis");
  box.replaceChildren();
  for (const [category, labels] of Object.entries(analysis || {})) {
    const group = document.createElement("div");
    group.className = "category";
    const title = document.createElement("h4");
    title.textContent = category.replace(/_/g, " ");
    group.append(title);
    for (const { value, score } of labels) {
      const row = document.createElement("div");
      row.className = "bar";
      const label = document.createElement("span");
      label.textContent = `${value} ${Math.round(score * 100)}%`;
      const fill = document.createElement("i");
      fill.style.width = Math.max(2, Math.round(score * 100)) + "%";
      row.append(fill, label);
      group.append(row);
    }
    box.append(group);
  }
  $("analysis-block").hidden = false;
}

function renderComplete(body) {
  stage("complete", "done");
  $("prompt").textContent = body.generatedPrompt;
  $("negative").textContent = body.sidecar.negative_prompt || "—";
  const note = body.degradedReason ? `Degraded: ${body.degradedReason}` : `${body.mode} mode`;
  $("prompt-note").textContent = note;
  $("prompt-block").hidden = false;
  countInto(body.generatedPrompt, $("prompt-tokens"));
  if (body.analysis) renderAnalysis(body.analysis);
}

function handleEvent(name, data) {
  if (name === "analyzed") renderAnalysis(data.analysis);
  if (name === "complete") return renderComplete(data);
  if (name === "failed") {
    stage(currentStage(), "failed");
    $("analyze-error").textContent = data.error.message;
    $("analyze-error").hidden = false;
    return;
  }
  stage(name, name === "analyzed" ? "done" : "active");
}

function currentStage() {
  const active = document.querySelector("#stages li.active");
  return active ? active.dataset.stage : "analyzing";
}

async function analyze() {
  if (!state.file) return;
  resetResult();
  $("analyze").disabled = true;
  const form = new FormData();
  form.append("image", state.file);
  form.append("user_prompt", $("user-prompt").value);
  form.append("deep_thinking", $("deep").checked ? "true" : "false");
  if ($("mode").value) form.append("mode", $("mode").value);
  try {
    const answer = await api("/api/images/analyze-stream", { method: "POST", body: form });
    if (!answer.ok) {
      const body = await answer.json().catch(() => ({}));
      throw new Error((body.error && body.error.message) || answer.statusText);
    }
    await readEvents(answer.body, handleEvent);
  } catch (err) {
    $("analyze-error").textContent = err.message;
    $("analyze-error").hidden = false;
  } finally {
    $("analyze").disabled = false;
  }
}

// Server-Sent Events from a POST: EventSource cannot POST, so read the body ourselves.
async function readEvents(stream, onEvent) {
  const reader = stream.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) name = line.slice(7);
        else if (line.startsWith("data: ")) data.push(line.slice(6));
      }
      if (data.length) onEvent(name, JSON.parse(data.join("\n")));
    }
  }
}

// --- token counts --------------------------------------------------------------------------

async function countInto(text, element) {
  try {
    const body = await json("/api/tokens", send("POST", { text }));
    element.textContent = `${body.count} / ${TOKEN_WINDOW} tokens${body.exact ? "" : " (estimate)"}`;
    element.classList.toggle("over", body.count > TOKEN_WINDOW);
  } catch (err) {
    element.textContent = "";
  }
}

function debounce(fn, ms) {
  let timer = 0;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

// --- the gallery ---------------------------------------------------------------------------

async function thumbInto(img, id, size) {
  try {
    const answer = await api(`/api/gallery/${id}/thumb?size=${size}`);
    if (!answer.ok) throw new Error("no preview");
    const url = URL.createObjectURL(await answer.blob());
    state.urls.push(url);
    img.src = url;
  } catch (err) {
    const placeholder = document.createElement("div");
    placeholder.className = "placeholder";
    placeholder.textContent = "no preview";
    img.replaceWith(placeholder);
  }
}

function renderChips(counts) {
  const box = $("chips");
  box.replaceChildren();
  for (const status of STATUSES) {
    const chip = document.createElement("button");
    chip.className = "chip" + (state.status === status ? " on" : "");
    chip.dataset.status = status;
    chip.textContent = `${status} ${counts[status] ?? 0}`;
    chip.onclick = () => {
      state.status = status;
      state.offset = 0;
      loadGallery();
    };
    box.append(chip);
  }
}

function card(item) {
  const figure = document.createElement("figure");
  figure.className = "item";
  figure.tabIndex = 0;
  figure.dataset.id = item.id;
  const img = document.createElement("img");
  img.alt = item.name;
  thumbInto(img, item.id, "small");
  const caption = document.createElement("figcaption");
  const name = document.createElement("strong");
  name.textContent = item.name;
  const badge = document.createElement("span");
  badge.className = "badge " + item.status;
  badge.textContent = item.status;
  const text = document.createElement("p");
  text.textContent = item.caption || item.reason || "no caption yet";
  caption.append(badge, name, text);
  figure.append(img, caption);
  figure.onclick = () => openItem(item.id);
  figure.onkeydown = (e) => e.key === "Enter" && openItem(item.id);
  return figure;
}

async function loadGallery() {
  const params = new URLSearchParams({
    status: state.status, q: state.q, sort: state.sort, offset: state.offset, limit: LIMIT,
  });
  try {
    const body = await json("/api/gallery?" + params);
    for (const url of state.urls.splice(0)) URL.revokeObjectURL(url);
    state.total = body.total;
    renderChips(body.counts);
    $("grid").replaceChildren(...body.items.map(card));
    const last = Math.min(body.offset + body.items.length, body.total);
    $("range").textContent = body.total ? `${body.offset + 1}–${last} of ${body.total}` : "no images";
    $("prev").disabled = body.offset === 0;
    $("next").disabled = last >= body.total;
    $("gallery-note").textContent = body.truncated ? "The inbox is larger than the index holds; some images are not listed." : "";
  } catch (err) {
    $("gallery-note").textContent = err.message;
  }
}

// --- one image: its record and its caption --------------------------------------------------

async function openItem(id) {
  const item = await json(`/api/gallery/${id}`);
  state.item = item;
  $("detail-name").textContent = item.key;
  $("detail-status").textContent = item.status;
  $("detail-status").className = "badge " + item.status;
  $("detail-mode").textContent = item.mode ? `${item.mode} mode` : "";
  $("detail-reason").textContent = item.reason || "";
  $("caption").value = item.caption;
  $("caption-owner").textContent = ownerText(item.owner);
  $("saved").textContent = "";
  $("record").textContent = item.record ? JSON.stringify(item.record, null, 2) : "no record yet";
  const old = document.querySelector(".detail > .placeholder, .detail > img");
  const img = document.createElement("img");
  img.id = "detail-image";
  img.alt = item.key;
  old.replaceWith(img);
  thumbInto(img, id, "large");
  countInto(item.caption, $("caption-tokens"));
  $("detail").showModal();
}

function ownerText(owner) {
  if (owner === "user") return "(yours: promptd will not overwrite it)";
  if (owner === "promptd") return "(written by promptd)";
  return "(no .txt yet)";
}

async function saveCaption() {
  const item = state.item;
  try {
    const body = await json(`/api/gallery/${item.id}/caption`, send("PUT", { caption: $("caption").value }));
    $("caption").value = body.caption;
    $("caption-owner").textContent = ownerText("user");
    $("saved").textContent = `Saved to ${body.txt}`;
    loadGallery();
  } catch (err) {
    $("saved").textContent = err.message;
  }
}

// --- find and replace ----------------------------------------------------------------------

function replaceRequest(token) {
  return {
    find: $("find").value, replace: $("replace-with").value, case_sensitive: $("case").checked,
    status: state.status, q: state.q, token: token || null,
  };
}

async function previewReplace() {
  try {
    const body = await json("/api/captions/replace", send("POST", replaceRequest()));
    state.preview = body;
    const list = $("changes");
    list.replaceChildren(...body.changes.map((c) => {
      const li = document.createElement("li");
      const key = document.createElement("strong");
      key.textContent = c.key;
      const request = replaceRequest();
      const before = marked(c.before, request.find, request.case_sensitive, "before");
      const after = marked(c.after, request.replace, request.case_sensitive, "after");
      li.append(key, before, after);
      return li;
    }));
    const more = body.total > body.changes.length ? ` (the first ${body.changes.length} shown)` : "";
    const emptied = body.emptied.length ? `; ${body.emptied.length} would become empty and are left alone` : "";
    $("replace-note").textContent = `${body.total} caption(s) would change${more}${emptied}.`;
    $("apply-replace").disabled = body.total === 0;
  } catch (err) {
    $("replace-note").textContent = err.message;
  }
}

// The text with each occurrence of `word` wrapped in <mark> (built with nodes, never HTML).
function marked(text, word, caseSensitive, className) {
  const span = document.createElement("span");
  span.className = className;
  if (!word) {
    span.textContent = text;
    return span;
  }
  const hay = caseSensitive ? text : text.toLowerCase();
  const needle = caseSensitive ? word : word.toLowerCase();
  let at = 0;
  for (let hit = hay.indexOf(needle); hit >= 0; hit = hay.indexOf(needle, at)) {
    span.append(text.slice(at, hit));
    const mark = document.createElement("mark");
    mark.textContent = text.slice(hit, hit + word.length);
    span.append(mark);
    at = hit + word.length;
  }
  span.append(text.slice(at));
  return span;
}

async function applyReplace() {
  if (!state.preview) return;
  try {
    const body = await json("/api/captions/replace", send("POST", replaceRequest(state.preview.token)));
    $("replace-note").textContent = `Wrote ${body.written} caption(s)` + (body.skipped.length ? `; skipped ${body.skipped.length} changed since the preview.` : ".");
    $("changes").replaceChildren();
    $("apply-replace").disabled = true;
    state.preview = null;
    loadGallery();
  } catch (err) {
    $("replace-note").textContent = err.message;
  }
}

// --- wiring --------------------------------------------------------------------------------

function wire() {
  for (const tab of document.querySelectorAll(".tabs button")) tab.onclick = () => show(tab.dataset.view);
  $("file").onchange = (e) => choose(e.target.files[0]);
  const drop = $("drop");
  drop.ondragover = (e) => { e.preventDefault(); drop.classList.add("over"); };
  drop.ondragleave = () => drop.classList.remove("over");
  drop.ondrop = (e) => { e.preventDefault(); drop.classList.remove("over"); choose(e.dataTransfer.files[0]); };
  $("analyze").onclick = analyze;
  $("copy").onclick = async () => {
    await navigator.clipboard.writeText($("prompt").textContent).catch(() => {});
    $("copy").textContent = "Copied";
    setTimeout(() => ($("copy").textContent = "Copy"), 1500);
  };
  $("search").oninput = debounce(() => { state.q = $("search").value; state.offset = 0; loadGallery(); }, 250);
  $("sort").onchange = () => { state.sort = $("sort").value; state.offset = 0; loadGallery(); };
  $("prev").onclick = () => { state.offset = Math.max(0, state.offset - LIMIT); loadGallery(); };
  $("next").onclick = () => { state.offset += LIMIT; loadGallery(); };
  $("toggle-replace").onclick = () => ($("replace").hidden = !$("replace").hidden);
  $("preview-replace").onclick = previewReplace;
  $("apply-replace").onclick = applyReplace;
  for (const id of ["find", "replace-with", "case"]) $(id).oninput = () => ($("apply-replace").disabled = true);
  $("caption").oninput = debounce(() => countInto($("caption").value, $("caption-tokens")), 150);
  $("save").onclick = saveCaption;
  $("token-bar").onsubmit = (e) => {
    e.preventDefault();
    state.token = $("token-input").value.trim();
    sessionStorage.setItem("promptd-token", state.token);
    $("token-bar").hidden = true;
    health();
  };
  health();
  setInterval(health, 10000);
  if (location.hash === "#gallery") show("gallery");
}

document.addEventListener("DOMContentLoaded", wire);
