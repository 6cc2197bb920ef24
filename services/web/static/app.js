// histo web front-end: query upload, filters, result grid, encoder comparison, tile detail,
// fused encoders, diversity, and relevance feedback ("more / less like this" on each card).
// Plain DOM code; server data is only ever written with textContent / attributes.
"use strict";

const $ = (selector) => document.querySelector(selector);

const state = {
  encoders: [],     // from /api/encoders
  stats: null,      // from /api/stats
  query: null,      // {kind: "file", file, preview} or {kind: "point", id, label, dataset}
  seq: 0,           // search counter: responses of superseded searches are dropped
  compare: false,   // compare-encoders view on/off
  boxes: [],        // query boxes drawn on the preview (original image pixels)
  mainBoxes: [],    // boxes of the selected encoder's answer (compare rows may differ)
  size: null,       // {width, height} of the original query image
  detailHit: null,  // hit shown in the detail dialog
  marks: new Map(), // point id -> "like" | "unlike": kept across feedback rounds until cleared
  feedbackOn: false, // searches send the marks once "Search with feedback" was pressed
};

// Search fields sent as lists (repeated in a form, arrays in JSON), as the API reads them.
const LIST_FIELDS = new Set(["encoders", "labels", "like", "unlike"]);

/* ---------- helpers ---------- */

// Build an element from attributes and children, never via innerHTML.
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

// The test harness waits on body[data-state]: idle | loading | done | error.
function setBusy(value) {
  document.body.dataset.state = value;
}

// Server error envelope {"error": {status, class, message}} as a JS error.
class ApiError extends Error {
  constructor(status, cls, message) {
    super(message);
    this.status = status;
    this.cls = cls;
  }
}

// fetch() that throws ApiError on failure and asks for a token on 401.
async function api(path, options = {}) {
  let res;
  try {
    res = await fetch(path, { credentials: "same-origin", ...options });
  } catch (err) {
    throw new ApiError(0, "NetworkError", "Cannot reach the server (" + err.message + ")");
  }
  if (res.ok) return res;
  let info = {};
  try {
    info = (await res.json()).error || {};
  } catch (_) { /* not JSON: fall back to the status line */ }
  if (res.status === 401) showTokenForm();
  throw new ApiError(res.status, info.class || "HTTPError",
    info.message || `HTTP ${res.status} ${res.statusText}`.trim());
}

// JSON convenience wrapper around api().
async function apiJson(path, options) {
  return (await api(path, options)).json();
}

// URLs of server-rendered images; ids are always encoded.
const tileUrl = (id, size) => `/api/tiles/${encodeURIComponent(id)}?size=${size}`;
const imageUrl = (id, size) => `/api/images/${encodeURIComponent(id)}?size=${size}`;

// Scores are shown with three decimals everywhere.
const fmtScore = (score) => (typeof score === "number" ? score.toFixed(3) : String(score ?? ""));

// Short form of a UUID for captions.
const shortId = (id) => String(id).slice(0, 8);

// "b012" or "b012 · slide s3" for the image-id line of a card.
function imageText(payload) {
  const parts = [payload.image_id ?? ""];
  if (payload.slide_id !== undefined && payload.slide_id !== null && payload.slide_id !== "") {
    parts.push("slide " + payload.slide_id);
  }
  return parts.filter(Boolean).join(" · ");
}

// Parse a number input; fall back when empty or invalid so requests stay valid.
function intFrom(input, min, max, fallback) {
  const n = Math.round(Number(input.value));
  if (input.value.trim() === "" || !Number.isFinite(n)) return fallback;
  return Math.min(max, Math.max(min, n));
}

// The diversity input as a number above 0, or null for off (the engine judges the range).
function diversityFrom(input) {
  const n = Number(input.value);
  return input.value.trim() !== "" && Number.isFinite(n) && n > 0 ? n : null;
}

function showError(message) {
  const box = $("#error");
  box.textContent = message || "";
  box.hidden = !message;
}

function setStatus(text) {
  $("#status").textContent = text;
}

/* ---------- auth ---------- */

// Shown when /api answers 401; the cookie also authorises <img src=/api/...>.
function showTokenForm() {
  const form = $("#token-form");
  if (!form.hidden) return;
  form.hidden = false;
  $("#token").focus();
}

// Store the token as a cookie and load everything again.
function submitToken(event) {
  event.preventDefault();
  const value = $("#token").value.trim();
  if (!value) return;
  document.cookie = "histo_token=" + encodeURIComponent(value) + "; path=/; SameSite=Strict";
  $("#token-form").hidden = true;
  $("#token").value = "";
  showError("");
  start();
}

/* ---------- metadata: encoders, stats ---------- */

// Both requests are needed before the URL can be applied to the controls.
async function loadMeta() {
  const [enc, stats] = await Promise.all([apiJson("/api/encoders"), apiJson("/api/stats")]);
  state.encoders = enc.encoders || [];
  state.stats = stats || {};
  renderSummary();
  renderEncoders();
  renderDatasets();
  renderLabels();
}

function renderSummary() {
  const s = state.stats;
  const nSets = Object.keys(s.datasets || {}).length;
  const nEnc = state.encoders.length || (s.encoders || []).length;
  $("#summary").textContent = `${s.points ?? 0} tiles · ${nSets} data sets · ${nEnc} encoders`;
}

// One option per encoder, the server's default selected.
function renderEncoders() {
  const select = $("#encoder");
  select.replaceChildren(...state.encoders.map((e) => el("option", {
    value: e.name,
    text: `${e.name} (${e.kind}, ${e.dim}-d)`,
    title: [e.method, e.architecture, e.trained_on && "trained on " + e.trained_on].filter(Boolean).join(" · "),
  })));
  const def = state.encoders.find((e) => e.is_default);
  if (def) select.value = def.name;
  renderEncoderInfo();
  renderFuse();
}

const checkedFuse = () =>
  [...document.querySelectorAll('#fuse-encoders input[name="fuse"]:checked')].map((i) => i.value);

// One checkbox per encoder: two or more checked are searched together as one fused ranking.
function renderFuse(keep = checkedFuse()) {
  $("#fuse-encoders").replaceChildren(...state.encoders.map((e) => el("label", {},
    el("input", { type: "checkbox", name: "fuse", value: e.name, checked: keep.includes(e.name) }),
    ` ${e.name}`)));
  syncFuse();
}

// While encoders are fused the single-encoder select does not apply: say so by disabling it.
function syncFuse() {
  $("#encoder").disabled = checkedFuse().length > 1;
}

// A short line under the select so users know what the encoder is.
function renderEncoderInfo() {
  const e = state.encoders.find((x) => x.name === $("#encoder").value);
  $("#encoder-info").textContent = e ? [
    e.method, e.architecture, e.input_size && `${e.input_size}px input`,
    e.trained_on && "trained on " + e.trained_on,
  ].filter(Boolean).join(" · ") : "";
}

function renderDatasets() {
  const select = $("#dataset");
  const current = select.value;
  const options = Object.entries(state.stats.datasets || {})
    .map(([name, n]) => el("option", { value: name, text: `${name} (${n})` }));
  select.replaceChildren(el("option", { value: "", text: "any data set" }), ...options);
  select.value = options.some((o) => o.value === current) ? current : "";
}

// Label counts of one data set, or the union over all (counts summed).
function labelCounts(dataset) {
  const all = state.stats?.labels || {};
  const sources = dataset ? [all[dataset] || {}] : Object.values(all);
  const counts = new Map();
  for (const src of sources) {
    for (const [label, n] of Object.entries(src)) counts.set(label, (counts.get(label) || 0) + n);
  }
  return [...counts].sort((a, b) => a[0].localeCompare(b[0]));
}

const checkedLabels = () =>
  [...document.querySelectorAll('#labels input[name="label"]:checked')].map((i) => i.value);

// Re-render the checkboxes, keeping the checked ones that still exist.
function renderLabels(keep = checkedLabels()) {
  const rows = labelCounts($("#dataset").value).map(([label, n]) => el("label", {},
    el("input", { type: "checkbox", name: "label", value: label, checked: keep.includes(label) }),
    ` ${label} (${n})`));
  $("#labels").replaceChildren(...rows);
  if (!rows.length) $("#labels").append(el("p", { class: "hint", text: "no labels" }));
}

/* ---------- controls and URL ---------- */

// Current filter settings as one object.
function readControls() {
  return {
    encoder: $("#encoder").value,
    dataset: $("#dataset").value,
    labels: checkedLabels(),
    topK: intFrom($("#top-k"), 1, 1000, 10),
    perImage: intFrom($("#per-image"), 1, 1e6, null),
    fuse: checkedFuse(),
    fusion: $("#fusion").value,
    diversity: diversityFrom($("#diversity")),
    marks: state.feedbackOn ? [...state.marks] : [],
  };
}

// The encoders one search uses: the fused ones when 2+ are checked, else the selected one.
const encodersOf = (c) => (c.fuse.length > 1 ? c.fuse : [c.encoder].filter(Boolean));

// The query's settings as a URL:
// ?encoder=..&fuse=a&fuse=b&fusion=dbsf&dataset=..&label=A&k=10&per_image=2&diversity=0.5&id=..&compare=1
function urlFor(c) {
  const p = new URLSearchParams();
  if (c.encoder) p.set("encoder", c.encoder);
  for (const name of c.fuse) p.append("fuse", name);
  if (c.fusion !== "rrf") p.set("fusion", c.fusion);
  if (c.dataset) p.set("dataset", c.dataset);
  for (const label of c.labels) p.append("label", label);
  p.set("k", String(c.topK));
  if (c.perImage) p.set("per_image", String(c.perImage));
  if (c.diversity !== null) p.set("diversity", String(c.diversity));
  if (state.query?.kind === "point") p.set("id", state.query.id);
  if (state.compare) p.set("compare", "1");
  return location.pathname + "?" + p.toString();
}

// Keep the address bar in step with the controls (push for a new point query).
function syncUrl(push = false) {
  const url = urlFor(readControls());
  if (push) history.pushState(null, "", url);
  else history.replaceState(null, "", url);
}

// Apply ?encoder=..&label=..&id=.. to the controls and run a point search if asked.
function applyUrl() {
  const p = new URLSearchParams(location.search);
  const enc = p.get("encoder");
  if (enc && state.encoders.some((e) => e.name === enc)) $("#encoder").value = enc;
  renderEncoderInfo();
  renderFuse(p.getAll("fuse"));
  $("#fusion").value = p.get("fusion") === "dbsf" ? "dbsf" : "rrf";
  $("#diversity").value = p.get("diversity") || "";
  const ds = p.get("dataset") || "";
  $("#dataset").value = ds in (state.stats.datasets || {}) ? ds : "";
  renderLabels(p.getAll("label"));
  $("#top-k").value = p.get("k") || "10";
  $("#per-image").value = p.get("per_image") || "";
  setCompareMode(p.get("compare") === "1");
  const id = p.get("id");
  if (id) {
    const same = state.query?.kind === "point" && state.query.id === id;
    setQuery(same ? state.query : { kind: "point", id });
  } else if (state.query?.kind === "point") {
    setQuery(null);
  }
  if (state.query) runSearch();
}

function setCompareMode(on) {
  state.compare = on;
  $("#compare").setAttribute("aria-pressed", on ? "true" : "false");
  $("#results").hidden = on;
  $("#compare-view").hidden = !on;
}

/* ---------- the query ---------- */

// Replace the current query; frees the old preview's object URL. Marks belong to one query.
function setQuery(query) {
  const old = state.query;
  if (old && old !== query && old.preview) {
    old.preview.then((p) => URL.revokeObjectURL(p.url), () => {});
  }
  if (old !== query) resetMarks();
  state.query = query;
  state.boxes = state.mainBoxes = [];
  state.size = null;
  renderQueryView();
}

// Fetch the server-side preview once per file (Chrome cannot show TIFF itself).
function loadPreview(query) {
  if (!query.preview) {
    const form = new FormData();
    form.append("image", query.file, query.file.name);
    form.append("size", "512");
    query.preview = api("/api/preview", { method: "POST", body: form }).then(async (res) => {
      const width = Number(res.headers.get("X-Image-Width")) || 0;
      const height = Number(res.headers.get("X-Image-Height")) || 0;
      const url = URL.createObjectURL(await res.blob());
      return { url, width, height };
    });
    query.preview.catch(() => { query.preview = null; });  // let the next search retry
  }
  return query.preview;
}

// Draw the query image (preview or tile) and its caption; boxes come with results.
// nTiles: the tile count of an image query; shown: the server's sentence on how it was searched.
function renderQueryView(preview = null, nTiles = null, shown = null) {
  const view = $("#query-view");
  const q = state.query;
  if (!q) return view.replaceChildren();
  const frame = el("div", { id: "query-frame", class: "query-frame" });
  const caption = el("p", { id: "query-caption", class: "caption" });
  if (q.kind === "point") {
    frame.append(el("img", { id: "query-image", src: tileUrl(q.id, 224), alt: "query tile" }));
    const known = [q.label, q.dataset].filter(Boolean).join(", ");
    caption.textContent = `tile ${shortId(q.id)}` + (known ? ` (${known})` : "");
  } else if (preview) {
    state.size = { width: preview.width, height: preview.height };
    const img = el("img", { id: "query-image", src: preview.url, alt: "query image " + q.file.name });
    img.addEventListener("load", () => { if (!state.size?.width) drawBoxes(); });  // no size headers
    frame.append(img);
    const dims = preview.width ? ` — ${preview.width}×${preview.height}` : "";
    const tiles = nTiles === null ? "" : `, searched as ${nTiles} tile${nTiles === 1 ? "" : "s"}`;
    caption.textContent = q.file.name + (shown ? ": " + shown : dims + tiles);
  } else {
    caption.textContent = q.file.name + " — loading preview…";
  }
  view.replaceChildren(frame, caption);
  drawBoxes();
}

// Outline each query box on the preview, as percentages of the original image.
function drawBoxes() {
  const frame = $("#query-frame");
  const img = $("#query-image");
  if (!frame || !img || state.query?.kind !== "file") return;
  frame.querySelectorAll(".query-box").forEach((b) => b.remove());
  const w = state.size?.width || img.naturalWidth;
  const h = state.size?.height || img.naturalHeight;
  if (!w || !h) return;
  state.boxes.forEach((b, i) => {
    const box = el("div", { class: "query-box", "data-index": i });
    Object.assign(box.style, {
      left: (100 * b.x / w) + "%", top: (100 * b.y / h) + "%",
      width: (100 * b.w / w) + "%", height: (100 * b.h / h) + "%",
    });
    frame.append(box);
  });
}

// Highlight one query tile (index) on the preview, or none with -1.
function highlightBox(index, boxes) {
  if (boxes && boxes !== state.boxes) {  // compare rows may tile the query differently
    state.boxes = boxes;
    drawBoxes();
  }
  document.querySelectorAll("#query-frame .query-box").forEach((b) => {
    b.classList.toggle("active", Number(b.dataset.index) === index);
  });
}

// A chosen or dropped file becomes the query and is searched at once.
function selectFile(file) {
  if (!file) return;
  setQuery({ kind: "file", file, preview: null });
  syncUrl();
  runSearch();
}

/* ---------- searching ---------- */

// The search's fields as [name, value] pairs; list fields repeat their name.
function searchFields(c, encoders) {
  const fields = [["top_k", c.topK]];
  if (encoders.length > 1) {
    for (const name of encoders) fields.push(["encoders", name]);
    fields.push(["fusion", c.fusion]);
  } else if (encoders.length) {
    fields.push(["encoder", encoders[0]]);
  }
  if (c.dataset) fields.push(["dataset", c.dataset]);
  for (const label of c.labels) fields.push(["labels", label]);
  if (c.perImage) fields.push(["per_image", c.perImage]);
  if (c.diversity !== null) fields.push(["diversity", c.diversity]);
  for (const [id, kind] of c.marks) fields.push([kind, id]);
  return fields;
}

// One /api/search request for the current query: a form with the file, or JSON with the point id.
function searchRequest(query, c, encoders) {
  const fields = searchFields(c, encoders);
  if (query.kind === "file") {
    const form = new FormData();
    form.append("image", query.file, query.file.name);
    for (const [name, value] of fields) form.append(name, String(value));
    return apiJson("/api/search", { method: "POST", body: form });
  }
  const body = { point_id: query.id };
  for (const [name, value] of fields) {
    if (LIST_FIELDS.has(name)) (body[name] ||= []).push(value);
    else body[name] = value;
  }
  return apiJson("/api/search", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
}

// Run the current query (single grid or compare view); only the newest search may render.
async function runSearch() {
  const query = state.query;
  if (!query) return;
  const seq = ++state.seq;
  const c = readControls();
  syncUrl();
  setBusy("loading");
  showError("");
  setStatus("Searching…");
  try {
    const preview = query.kind === "file" ? loadPreview(query) : Promise.resolve(null);
    if (state.compare) await runCompare(seq, query, c, preview);
    else await runSingle(seq, query, c, preview);
    if (seq === state.seq) setBusy("done");
  } catch (err) {
    if (seq !== state.seq) return;
    showError(err.message);
    setStatus("Search failed.");
    setBusy("error");
  }
}

// Single-encoder search: preview and results arrive together.
async function runSingle(seq, query, c, preview) {
  const [res, pv] = await Promise.all([searchRequest(query, c, encodersOf(c)), preview]);
  if (seq !== state.seq) return;
  showQueryResult(query, res, pv);
  const boxes = res.query_boxes || [];
  const fused = Boolean(res.fusion);
  $("#results").replaceChildren(...res.hits.map((hit, i) => makeCard(hit, i + 1, boxes, fused)));
  if (!res.hits.length) $("#results").append(el("p", { class: "empty", text: "No hits — try fewer filters." }));
  const n = res.hits.length;
  const how = fused ? `${(res.encoders || []).join(" + ")} fused by ${res.fusion.toUpperCase()}` : res.encoder;
  const fb = c.marks.length ? `, feedback: ${feedbackText(new Map(c.marks))}` : "";
  setStatus(`${n} hit${n === 1 ? "" : "s"} in ${Math.round(res.took_ms)} ms with ${how}${fb}`);
}

// Update the query panel from a response (tile count, boxes, label of a point query).
function showQueryResult(query, res, preview) {
  if (query.kind === "point" && !query.label) {
    const self = res.hits.find((h) => h.id === query.id);  // the point usually finds itself
    if (self) Object.assign(query, { label: self.payload?.label, dataset: self.payload?.dataset });
  }
  state.boxes = state.mainBoxes = res.query_boxes || [];
  renderQueryView(preview, query.kind === "file" ? state.boxes.length : null, res.query_image?.summary);
}

// Compare view: the same query once per encoder, rows filled as answers arrive.
async function runCompare(seq, query, c, preview) {
  const view = $("#compare-view");
  if (!state.encoders.length) {
    view.replaceChildren(el("p", { class: "empty", text: "No encoders to compare." }));
    await preview;
    return;
  }
  const rows = state.encoders.map((enc) => makeRow(enc, enc.name === c.encoder));
  view.replaceChildren(...rows);
  const jobs = state.encoders.map((enc, i) => searchRequest(query, c, [enc.name]).then(
    (res) => { if (seq === state.seq) fillRow(rows[i], enc, res); return res; },
    (err) => { if (seq === state.seq) failRow(rows[i], err); throw err; }));
  const [settled, pv] = await Promise.all([Promise.allSettled(jobs), preview]);
  if (seq !== state.seq) return;
  const ok = settled.filter((s) => s.status === "fulfilled");
  if (!ok.length) throw settled[0].reason;
  const idx = state.encoders.findIndex((e) => e.name === c.encoder);
  const main = settled[idx]?.status === "fulfilled" ? settled[idx].value : ok[0].value;
  showQueryResult(query, main, pv);
  const failed = settled.length - ok.length;
  setStatus(`Compared ${ok.length} encoder${ok.length === 1 ? "" : "s"}, top ${c.topK} each` +
    (failed ? ` (${failed} failed)` : ""));
}

// Empty row shell for one encoder while its search runs.
function makeRow(enc, current) {
  return el("div", { class: "encoder-row" + (current ? " current" : ""), "data-encoder": enc.name },
    el("div", { class: "row-head" },
      el("h3", { text: `${enc.name} · ${enc.kind} · …` }),
      el("span", { class: "agreement", text: "searching…" })),
    el("div", { class: "strip" }));
}

// Fill a row: title with timing, agreement cue, strip of cards.
function fillRow(row, enc, res) {
  row.querySelector("h3").textContent = `${enc.name} · ${enc.kind} · ${Math.round(res.took_ms)} ms`;
  const agree = majority(res.hits);
  const cue = row.querySelector(".agreement");
  cue.textContent = agree ? `${agree.count}/${res.hits.length} ${agree.label}` : "no hits";
  cue.title = "hits sharing the row's most common label";
  const boxes = res.query_boxes || [];
  row.querySelector(".strip").replaceChildren(...res.hits.map((hit, i) => makeCard(hit, i + 1, boxes)));
}

// Show a failed encoder's error inside its row instead of failing the whole view.
function failRow(row, err) {
  row.classList.add("failed");
  row.querySelector(".agreement").textContent = "failed";
  row.querySelector(".strip").replaceChildren(el("p", { class: "row-error", text: err.message }));
}

// Most common label among hits: a quick agreement cue between encoders.
function majority(hits) {
  const counts = new Map();
  for (const h of hits) {
    const label = h.payload?.label ?? "?";
    counts.set(label, (counts.get(label) || 0) + 1);
  }
  let best = null;
  for (const [label, count] of counts) if (!best || count > best.count) best = { label, count };
  return best;
}

/* ---------- cards and detail ---------- */

// One result card; click/Enter opens the detail, hover/focus shows its query tile. A group,
// not a button: its like / unlike buttons must stay reachable. Fused hits say who found them.
function makeCard(hit, rank, boxes, fused = false) {
  const p = hit.payload || {};
  const card = el("div", {
    class: "card", "data-id": hit.id, "data-label": p.label ?? "", "data-dataset": p.dataset ?? "",
    tabindex: 0, role: "group",
    "aria-label": `rank ${rank}, ${p.label ?? ""}, ${p.dataset ?? ""}, score ${fmtScore(hit.score)}; Enter opens details`,
  },
  el("img", {
    class: "tile", src: tileUrl(hit.id, 160), width: 160, height: 160,
    alt: `${p.label ?? "tile"} from ${p.dataset ?? ""} ${p.image_id ?? ""}`.trim(),
    loading: rank > 24 ? "lazy" : null,
  }),
  el("div", { class: "meta" },
    el("div", { class: "meta-top" },
      el("span", { class: "rank", text: "#" + rank }),
      el("span", { class: "score", text: fmtScore(hit.score) })),
    el("span", { class: "label", text: p.label ?? "—" }),
    el("span", { class: "dataset", text: p.dataset ?? "" }),
    el("span", { class: "image-id", text: imageText(p) }),
    fused ? el("span", { class: "found-by", text: "found by: " + (hit.found_by || []).join(", ") }) : null),
  markButtons(hit.id));
  card.addEventListener("click", () => openDetail(hit));
  card.addEventListener("keydown", (e) => {
    if (e.target !== card) return;  // Enter / Space on a like button is that button's
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); openDetail(hit); }
  });
  if (Number.isInteger(hit.query_tile)) {
    const on = () => highlightBox(hit.query_tile, boxes);
    const off = () => highlightBox(-1, state.mainBoxes);
    card.addEventListener("mouseenter", on);
    card.addEventListener("focus", on);
    card.addEventListener("mouseleave", off);
    card.addEventListener("blur", off);
  }
  paintCard(card);
  return card;
}

/* ---------- relevance feedback ---------- */

// The card's "more / less like this" toggles; a click marks the tile without opening the detail.
function markButtons(id) {
  const button = (kind, symbol, words) => {
    const b = el("button", {
      type: "button", class: `${kind}-btn`, "data-kind": kind, "aria-label": words, title: words,
    }, `${symbol} ${kind === "like" ? "more" : "less"}`);
    b.addEventListener("click", (e) => { e.stopPropagation(); toggleMark(id, kind); });
    return b;
  };
  return el("div", { class: "card-actions" },
    // "+" and U+2212: in every font, where emoji need an emoji font (headless Chromium has none)
    button("like", "+", "more like this"), button("unlike", "\u2212", "less like this"));
}

// Like, unlike or take back a mark (a tile is never both: the engine refuses that).
function toggleMark(id, kind) {
  if (state.marks.get(id) === kind) state.marks.delete(id);
  else state.marks.set(id, kind);
  if (!state.marks.size) state.feedbackOn = false;
  renderMarks();
}

// A new query starts without marks.
function resetMarks() {
  state.marks.clear();
  state.feedbackOn = false;
  renderMarks();
}

// Show a card's mark on it and on its toggles.
function paintCard(card) {
  const mark = state.marks.get(card.dataset.id);
  card.classList.toggle("liked", mark === "like");
  card.classList.toggle("unliked", mark === "unlike");
  for (const b of card.querySelectorAll(".card-actions button")) {
    b.classList.toggle("active", b.dataset.kind === mark);
    b.setAttribute("aria-pressed", String(b.dataset.kind === mark));
  }
}

// "2 liked, 1 unliked" for a map of marks.
function feedbackText(marks = state.marks) {
  const liked = [...marks.values()].filter((kind) => kind === "like").length;
  return `${liked} liked, ${marks.size - liked} unliked`;
}

// The bar above the results and every card: marked tiles vanish from feedback results (the
// engine excludes them), so the bar keeps their thumbnails, each a button to take the mark back.
function renderMarks() {
  document.querySelectorAll(".card").forEach(paintCard);
  $("#feedback-bar").hidden = !state.marks.size;
  $("#feedback-count").textContent = feedbackText();
  $("#feedback-marks").replaceChildren(...[...state.marks].map(([id, kind]) => {
    const words = `${kind === "like" ? "liked" : "unliked"} tile ${shortId(id)}, click to unmark`;
    const chip = el("button", { type: "button", class: `mark ${kind}`, "data-id": id, title: words, "aria-label": words },
      el("img", { src: tileUrl(id, 64), width: 32, height: 32, alt: "" }));
    chip.addEventListener("click", () => toggleMark(id, kind));
    return chip;
  }));
}

// Re-run the current query steered by the marks, now and on every later change until cleared.
function searchWithFeedback() {
  state.feedbackOn = true;
  runSearch();
}

// Drop every mark; if they were steering the results, search plainly again.
function clearFeedback() {
  const steered = state.feedbackOn;
  resetMarks();
  if (steered) runSearch();
}

// Show objects readably in the payload table.
const fmtValue = (v) => (v !== null && typeof v === "object" ? JSON.stringify(v) : String(v ?? ""));

// Detail dialog: source image with the tile's box, payload table, "more like this".
function openDetail(hit) {
  const p = hit.payload || {};
  state.detailHit = hit;
  const img = $("#detail-image");
  img.src = imageUrl(hit.id, 800);
  img.alt = `source image ${p.image_id ?? ""} with the tile outlined`;
  $("#detail-title").textContent = [p.label, p.dataset, p.image_id].filter(Boolean).join(" · ") || "Tile";
  const rows = [["id", hit.id], ["score", fmtScore(hit.score)], ...Object.entries(p)];
  if (Number.isInteger(hit.query_tile)) rows.push(["query_tile", hit.query_tile]);
  $("#detail-payload").replaceChildren(el("tbody", {}, ...rows.map(([k, v]) =>
    el("tr", {}, el("th", { scope: "row", text: k }), el("td", { text: fmtValue(v) })))));
  $("#where-in-slide").hidden = !(p.slide_id && "level" in p && state.query);  // whole-slide tiles only
  const dialog = $("#detail");
  if (!dialog.open) dialog.showModal();
}

// Whole-slide hits: the slide's thumbnail coloured by similarity to the current query.
async function whereInSlide() {
  const hit = state.detailHit;
  const query = state.query;
  if (!hit || !query) return;
  const c = readControls();
  let options;
  if (query.kind === "file") {
    const form = new FormData();
    form.append("image", query.file, query.file.name);
    form.append("slide_id", hit.payload.slide_id);
    if (c.encoder) form.append("encoder", c.encoder);
    options = { method: "POST", body: form };
  } else {
    const body = { point_id: query.id, slide_id: hit.payload.slide_id, encoder: c.encoder || undefined };
    options = { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  }
  const img = $("#detail-image");
  try {
    const res = await api("/api/heatmap", options);
    img.src = URL.createObjectURL(await res.blob());
    img.alt = `similarity of every tile of ${hit.payload.slide_id} to the query`;
  } catch (err) {
    showError(err.message);
  }
}

// Search with the shown tile as query, keeping encoder and filters.
function moreLikeThis() {
  const hit = state.detailHit;
  if (!hit) return;
  $("#detail").close();
  setQuery({ kind: "point", id: hit.id, label: hit.payload?.label, dataset: hit.payload?.dataset });
  syncUrl(true);
  runSearch();
}

/* ---------- wiring ---------- */

// Drag & drop onto #drop; elsewhere a dropped file must not navigate away.
function wireDrop() {
  const drop = $("#drop");
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  drop.addEventListener("dragleave", (e) => {
    if (!drop.contains(e.relatedTarget)) drop.classList.remove("over");
  });
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    selectFile(e.dataTransfer?.files?.[0]);
  });
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());
}

// Any control change re-runs the current query; submit never reloads the page.
function wireControls() {
  const form = $("#controls");
  form.addEventListener("change", (e) => {
    if (e.target.id === "dataset") renderLabels();
    if (e.target.id === "encoder") renderEncoderInfo();
    if (e.target.name === "fuse") syncFuse();
    syncUrl();
    runSearch();
  });
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    syncUrl();
    if (state.query) runSearch();
    else setStatus("Choose or drop an image first.");
  });
  $("#compare").addEventListener("click", () => {
    setCompareMode(!state.compare);
    syncUrl();
    runSearch();
  });
}

function wireEvents() {
  wireDrop();
  wireControls();
  $("#file").addEventListener("change", (e) => selectFile(e.target.files?.[0]));
  $("#token-form").addEventListener("submit", submitToken);
  $("#detail-close").addEventListener("click", () => $("#detail").close());
  $("#more-like-this").addEventListener("click", moreLikeThis);
  $("#where-in-slide").addEventListener("click", whereInSlide);
  $("#feedback-search").addEventListener("click", searchWithFeedback);
  $("#feedback-clear").addEventListener("click", clearFeedback);
  $("#detail").addEventListener("click", (e) => {  // a click on the backdrop closes
    if (e.target === e.currentTarget) e.currentTarget.close();
  });
  window.addEventListener("popstate", () => { if (state.stats) applyUrl(); });
}

// Load metadata, then apply the URL (which may start a point search).
async function start() {
  try {
    await loadMeta();
  } catch (err) {
    if (err.status === 401) {
      setStatus("Access token needed.");
      return;
    }
    showError(err.message);
    setStatus("Could not load encoders and statistics.");
    setBusy("error");
    return;
  }
  $("#token-form").hidden = true;
  setStatus(state.query ? "" : "Choose or drop an image to search.");
  applyUrl();
}

document.addEventListener("DOMContentLoaded", () => {
  setBusy("idle");
  wireEvents();
  start();
});
