// The softprompt playground: Try (streamed answers side by side, class bars), Train (upload,
// preview, live chart, cancel, download), Look inside (inspect data, heatmap, metadata).
// The admin key lives in this tab's sessionStorage and is sent only as a bearer header.

const $ = (id) => document.getElementById(id);
const KEY = "softprompt-admin-key";
let info = null;      // GET /playground/api/info
let models = [];      // GET /v1/models data
let job = null;       // the job shown in Train
let pollTimer = null;

// ---- helpers -------------------------------------------------------------------------

function el(tag, attrs = {}, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else if (k === "text") e.textContent = v; else e.setAttribute(k, v);
  }
  for (const k of kids) e.append(k);
  return e;
}

function show(box, msg) {
  const b = $(box);
  b.textContent = msg || "";
  b.hidden = !msg;
}

function headers(json = true) {
  const h = {};
  if (json) h["Content-Type"] = "application/json";
  const k = sessionStorage.getItem(KEY);
  if (k) h["Authorization"] = "Bearer " + k;
  return h;
}

// fetch + JSON; any failure becomes an Error with a readable message.
async function api(path, opts = {}) {
  let r;
  try {
    r = await fetch(path, { ...opts, headers: { ...headers(opts.body !== undefined), ...(opts.headers || {}) } });
  } catch (e) {
    throw new Error(`cannot reach the server (${e.message})`);
  }
  const text = await r.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { /* not JSON */ }
  if (!r.ok) {
    const m = body && body.error && body.error.message;
    throw new Error(`${r.status} ${r.statusText}: ${m || text.slice(0, 300) || "no details"}`);
  }
  return body;
}

const post = (path, body) => api(path, { method: "POST", body: JSON.stringify(body) });
const fmt = (x, d = 3) => (x === null || x === undefined ? "–" : Number(x).toFixed(d));

// ---- tabs and key --------------------------------------------------------------------

function setTab(name) {
  for (const t of document.querySelectorAll(".tab")) t.classList.toggle("active", t.dataset.tab === name);
  for (const p of document.querySelectorAll(".panel")) p.hidden = p.id !== name;
}

function keyState() {
  $("key-state").textContent = sessionStorage.getItem(KEY) ? "key set (this tab only)" : "no key";
}

// ---- models --------------------------------------------------------------------------

async function loadModels() {
  try {
    models = (await api("/v1/models")).data;
  } catch (e) {
    show("global-error", "Cannot list the prompts: " + e.message);
    return;
  }
  show("global-error", "");
  const base = info ? info.base_name : "base";
  for (let i = 0; i < 3; i++) {
    const sel = $(`try-model-${i}`);
    const keep = sel.value;
    sel.replaceChildren(el("option", { value: "", text: "(empty)" }));
    for (const m of models) {
      const label = m.id === base ? `${m.id} (bare model)` : `${m.id}${m.softprompt.task ? " · " + m.softprompt.task : ""}`;
      sel.append(el("option", { value: m.id, text: label }));
    }
    sel.append(el("option", { value: "__hard__", text: "hard prompt (type it)" }));
    sel.value = [...sel.options].some((o) => o.value === keep) ? keep : "";
  }
  const ins = $("inspect-prompt");
  const keepI = ins.value;
  ins.replaceChildren(...models.filter((m) => m.id !== base).map((m) => el("option", { value: m.id, text: m.id })));
  if ([...ins.options].some((o) => o.value === keepI)) ins.value = keepI;
}

// ---- Try -----------------------------------------------------------------------------

function buildTry() {
  const cols = $("try-columns");
  for (let i = 0; i < 3; i++) {
    const sel = el("select", { id: `try-model-${i}` });
    const hard = el("textarea", { id: `try-hard-${i}`, rows: "2", placeholder: "Hard prompt, e.g. Classify the sentiment of this review." });
    hard.hidden = true;
    sel.addEventListener("change", () => { hard.hidden = sel.value !== "__hard__"; });
    cols.append(el("div", { class: "card" }, el("label", { text: `Column ${i + 1}` }, sel), hard));
  }
  const outs = $("try-outputs");
  for (let i = 0; i < 3; i++) outs.append(el("div", { class: "card", id: `try-out-${i}` }));
}

// Stream one completion into `out` (SSE over fetch).
async function stream(body, out) {
  let r;
  try {
    r = await fetch("/v1/completions", { method: "POST", headers: headers(), body: JSON.stringify({ ...body, stream: true }) });
  } catch (e) {
    throw new Error(`cannot reach the server (${e.message})`);
  }
  if (!r.ok) {
    const t = await r.text();
    let m = t;
    try { m = JSON.parse(t).error.message; } catch { /* keep text */ }
    throw new Error(`${r.status}: ${m}`);
  }
  const reader = r.body.getReader();
  const dec = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let i;
    while ((i = buf.indexOf("\n\n")) >= 0) {
      const ev = buf.slice(0, i);
      buf = buf.slice(i + 2);
      for (const line of ev.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        const j = JSON.parse(data);
        if (j.error) throw new Error(j.error.message);
        out.textContent += j.choices[0].text;
      }
    }
  }
}

// One bar per class, largest first, named by its label value and word (`words`: value -> the
// label word the classifier scores, as /v1/classify returns them).
function bars(box, probs, words = {}) {
  const wrap = el("div", { class: "bars" });
  const entries = Object.entries(probs).sort((a, b) => b[1] - a[1]);
  for (const [label, p] of entries) {
    const fill = el("div", { class: "fill" });
    fill.style.width = `${(100 * p).toFixed(1)}%`;
    wrap.append(el("div", { class: "bar", "data-label": label, "data-p": String(p) },
      el("span", { text: words[label] ? `${label}${words[label]}` : label }), el("div", {}, fill), el("span", { class: "num", text: `${(100 * p).toFixed(1)}%` })));
  }
  box.append(wrap);
}

async function runColumn(i, input, maxTokens, temperature) {
  const model = $(`try-model-${i}`).value;
  const out = $(`try-out-${i}`);
  out.replaceChildren();
  if (!model) return;
  const base = info ? info.base_name : "base";
  let body = { model, prompt: input, max_tokens: maxTokens, temperature };
  let title = model;
  if (model === "__hard__") {
    const hard = $(`try-hard-${i}`).value;
    body = { ...body, model: base, prompt: hard ? `${hard}\n${input}` : input };
    title = "hard prompt";
  }
  out.append(el("h3", { text: title }));
  const m = models.find((x) => x.id === model);
  try {
    if (m && m.softprompt.task) {
      const c = await post("/v1/classify", { model, input });
      out.append(el("div", { class: "muted", text: `class: ${c.label} (task ${c.task})` }));
      bars(out, c.probabilities, c.candidates);
    }
  } catch (e) {
    // A prompt trained for generation has no classes: nothing to show, not an error.
    if (!/not a classification task/.test(e.message)) out.append(el("div", { class: "error", text: "classify: " + e.message }));
  }
  const text = el("div", { class: "out" });
  out.append(text);
  try {
    await stream(body, text);
    out.dataset.done = "1";
  } catch (e) {
    out.append(el("div", { class: "error", text: e.message }));
  }
}

async function sendTry() {
  show("try-msg", "");
  const input = $("try-input").value;
  if (!input.trim()) return show("try-msg", "Type an input text first.");
  if (![0, 1, 2].some((i) => $(`try-model-${i}`).value)) return show("try-msg", "Choose at least one column.");
  const maxTokens = parseInt($("try-max").value, 10) || 24;
  const temperature = parseFloat($("try-temp").value) || 0;
  await Promise.all([0, 1, 2].map((i) => runColumn(i, input, maxTokens, temperature)));
}

// ---- Train ---------------------------------------------------------------------------

async function trainBody(withName) {
  const b = {
    task: $("train-task").value,
    template: $("train-template").value || null,
    labels: $("train-labels").value || null,
    label_field: $("train-label-field").value || null,
    hard_prompt: $("train-hard").value || null,
  };
  const f = $("train-file").files[0];
  if (f) {
    if (info && f.size > info.limits.max_upload_bytes) {
      throw new Error(`${f.name} is ${f.size} bytes; this server takes at most ${info.limits.max_upload_bytes}`);
    }
    b.filename = f.name;
    b.data = await f.text();
  }
  if (withName) {
    b.name = $("train-name").value;
    b.steps = parseInt($("train-steps").value, 10);
    b.virtual_tokens = parseInt($("train-vt").value, 10);
    b.lr = parseFloat($("train-lr").value);
    b.batch_size = parseInt($("train-batch").value, 10);
  }
  return b;
}

async function preview() {
  show("train-msg", "");
  const box = $("preview");
  box.replaceChildren(el("span", { class: "muted", text: "rendering…" }));
  try {
    const p = await post("/playground/api/preview", await trainBody(false));
    const t = el("table", { id: "preview-table" });
    t.append(el("tr", {}, el("th", { text: "line" }), el("th", { text: "rendered input" }), el("th", { text: "tokens" }), el("th", { text: "gold" }), el("th", { text: "label words (tokens)" })));
    for (const r of p.rows) {
      const cands = r.candidates.map((c) => `${JSON.stringify(c.text)} (${c.tokens})`).join(", ");
      t.append(el("tr", { class: "preview-row" }, el("td", { class: "num", text: String(r.line) }), el("td", { class: "out", text: r.text }),
        el("td", { class: "num", text: String(r.tokens) }), el("td", { text: r.label ?? "–" }), el("td", { text: cands })));
    }
    const hard = p.hard_prompt ? `; hard prompt: ${p.hard_prompt.tokens} tokens` : "";
    box.replaceChildren(el("p", { class: "muted", text: `${p.rows_total} rows from ${p.source}; columns: ${p.columns.join(", ")}; task ${p.task.name}${hard}` }), t);
  } catch (e) {
    box.replaceChildren();
    show("train-msg", "Preview failed: " + e.message);
  }
}

async function startTraining() {
  show("train-msg", "");
  try {
    job = await post("/playground/api/jobs", await trainBody(true));
    drawJob();
    poll();
  } catch (e) {
    show("train-msg", "Cannot start: " + e.message);
  }
}

async function cancelJob() {
  if (!job) return;
  try {
    job = await post(`/playground/api/jobs/${job.id}/cancel`, {});
    drawJob();
  } catch (e) {
    show("train-msg", "Cannot cancel: " + e.message);
  }
}

function poll() {
  clearTimeout(pollTimer);
  pollTimer = setTimeout(async () => {
    if (!job) return;
    try {
      job = await api(`/playground/api/jobs/${job.id}`);
      drawJob();
    } catch (e) {
      show("train-msg", "Lost the job: " + e.message);
      return;
    }
    const st = job.progress.status;
    if (st === "queued" || st === "running") poll();
    else if (st === "done") loadModels();
  }, 600);
}

function drawJob() {
  const p = job.progress;
  $("job-name").textContent = `${job.name} (${job.kind}, task ${job.task}, ${job.virtual_tokens} virtual tokens)`;
  const s = $("job-status");
  s.textContent = p.status;
  s.className = "badge " + p.status;
  $("job-step").textContent = `step ${p.step}/${p.total_steps}`;
  $("job-speed").textContent = p.tokens_per_s ? `${p.tokens_per_s.toFixed(0)} tokens/s` : "";
  $("job-eta").textContent = p.eta_s !== null && p.eta_s !== undefined ? `ETA ${p.eta_s.toFixed(0)} s` : (p.status === "done" ? `took ${p.elapsed_s.toFixed(0)} s` : "");
  $("train-cancel").disabled = !(p.status === "queued" || p.status === "running");
  $("job-download").disabled = p.status !== "done";
  $("job-log").textContent = p.messages.join("\n");
  if (p.error) show("train-msg", `Job ${p.status}: ${p.error}`);
  chart($("chart"), p.loss, p.validation, p.total_steps);
  $("val-name").textContent = `validation ${p.metric || "accuracy"}`;
}

// Loss (left axis) and the validation metric (right axis: 0..1 for accuracy, else its range)
// against the step.
function chart(cv, loss, val, total) {
  const g = cv.getContext("2d");
  const W = cv.width, H = cv.height, L = 50, R = 50, T = 15, B = 30;
  g.clearRect(0, 0, W, H);
  g.font = "11px sans-serif";
  g.strokeStyle = "#ccc";
  g.strokeRect(L, T, W - L - R, H - T - B);
  const maxStep = Math.max(total || 1, ...loss.map((p) => p.step), 1);
  const maxLoss = Math.max(...loss.map((p) => p.value), 1e-6);
  const x = (s) => L + (W - L - R) * (s / maxStep);
  const yl = (v) => T + (H - T - B) * (1 - v / maxLoss);
  const vlo = Math.min(0, ...val.map((p) => p.value)), vhi = Math.max(1, ...val.map((p) => p.value));
  const ya = (v) => T + (H - T - B) * (1 - (v - vlo) / (vhi - vlo || 1));
  g.fillStyle = "#667";
  g.fillText("0", L - 10, H - B + 12);
  g.fillText(String(maxStep), W - R - 10, H - B + 14);
  g.fillText("step", (W - L - R) / 2 + L, H - 6);
  g.fillText(maxLoss.toFixed(2), 4, T + 8);
  g.fillText("loss", 4, T + 22);
  g.fillText(vhi.toFixed(2), W - R + 6, T + 8);
  g.fillText("val", W - R + 6, T + 22);
  g.fillText(vlo.toFixed(2), W - R + 6, H - B);
  const line = (pts, y, color) => {
    if (!pts.length) return;
    g.strokeStyle = color; g.fillStyle = color; g.lineWidth = 2;
    g.beginPath();
    pts.forEach((p, i) => (i ? g.lineTo(x(p.step), y(p.value)) : g.moveTo(x(p.step), y(p.value))));
    g.stroke();
    for (const p of pts) { g.beginPath(); g.arc(x(p.step), y(p.value), 2.5, 0, 7); g.fill(); }
  };
  line(loss, yl, "#2855c8");
  line(val, ya, "#e07b16");
  cv.dataset.lossPoints = String(loss.length);
  cv.dataset.valPoints = String(val.length);
}

async function downloadZip(name) {
  const msgBox = $("train").hidden ? "inspect-msg" : "train-msg";
  try {
    const r = await fetch(`/playground/api/prompts/${encodeURIComponent(name)}/download`, { headers: headers(false) });
    if (!r.ok) {
      const t = await r.text();
      let m = t;
      try { m = JSON.parse(t).error.message; } catch { /* keep text */ }
      throw new Error(`${r.status}: ${m}`);
    }
    const url = URL.createObjectURL(await r.blob());
    const a = el("a", { href: url, download: `${name}.zip` });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (e) {
    show(msgBox, "Download failed: " + e.message);
  }
}

// ---- Look inside ---------------------------------------------------------------------

function heatmap(m) {
  const n = m.length, c = 18;
  const cv = el("canvas", { id: "heatmap", width: String(n * c + 40), height: String(n * c + 20) });
  const g = cv.getContext("2d");
  g.font = "10px sans-serif";
  m.forEach((row, i) => row.forEach((v, j) => {
    // cosine -1 (blue) .. 0 (white) .. 1 (red)
    const a = Math.min(1, Math.abs(v));
    const [r, gg, b] = v >= 0 ? [255, 255 * (1 - a), 255 * (1 - a)] : [255 * (1 - a), 255 * (1 - a), 255];
    g.fillStyle = `rgb(${r | 0},${gg | 0},${b | 0})`;
    g.fillRect(30 + j * c, 10 + i * c, c - 1, c - 1);
  }));
  g.fillStyle = "#333";
  for (let i = 0; i < n; i += Math.max(1, Math.ceil(n / 10))) g.fillText(`v${i}`, 2, 10 + i * c + 12);
  return cv;
}

async function inspectPrompt() {
  show("inspect-msg", "");
  const name = $("inspect-prompt").value;
  const out = $("inspect-out");
  if (!name) return show("inspect-msg", "No prompt is loaded yet: train one in the Train tab.");
  out.replaceChildren(el("span", { class: "muted", text: "inspecting…" }));
  try {
    const r = await api(`/playground/api/prompts/${encodeURIComponent(name)}/inspect`);
    const ins = r.inspect;
    const t = el("table", { id: "inspect-table" });
    t.append(el("tr", {}, ...["vector", "norm", "norm pct", "nearest tokens (cosine)", "drift L2", "drift cos"].map((h) => el("th", { text: h }))));
    for (const v of ins.vectors) {
      const near = el("td");
      for (const n of v.nearest_cosine) near.append(el("code", { class: "piece", title: `id ${n.id}, cos ${n.cosine.toFixed(3)}`, text: JSON.stringify(n.piece) }));
      t.append(el("tr", { class: "vector-row" }, el("td", { text: v.label }), el("td", { class: "num", text: fmt(v.norm) }),
        el("td", { class: "num", text: fmt(v.norm_percentile, 1) }), near,
        el("td", { class: "num", text: v.drift ? fmt(v.drift.l2) : "–" }), el("td", { class: "num", text: v.drift ? fmt(v.drift.cosine) : "–" })));
    }
    const meta = r.meta || {};
    const dl = el("table", { id: "inspect-meta" });
    const rowm = (k, v) => dl.append(el("tr", {}, el("th", { text: k }), el("td", { class: "out", text: v })));
    rowm("sha256", r.sha256);
    rowm("base model", meta.base_model || "–");
    rowm("model fingerprint", `${meta.model_fingerprint || "–"} (${r.fingerprint_matches === false ? "DIFFERS from the served model" : r.fingerprint_matches ? "matches the served model" : "not recorded"})`);
    rowm("created", `${meta.created_at || "–"} by ${meta.created_by || "–"}`);
    rowm("task", meta.task ? JSON.stringify(meta.task) : "–");
    rowm("metrics", meta.metrics ? JSON.stringify(meta.metrics) : "–");
    rowm("nearest hard prompt", ins.hard_prompt.text);
    const e = ins.embedding_norms;
    rowm("token embedding norms", `min ${fmt(e.min)} · median ${fmt(e.median)} · p95 ${fmt(e.p95)} · max ${fmt(e.max)}`);
    if (ins.notes.length) rowm("notes", ins.notes.join("\n"));
    const parts = [el("h3", { text: `${name}: ${ins.num_virtual_tokens} virtual tokens × ${ins.hidden_size}; nearest tokens, norms and drift` }), t,
      el("h3", { text: "Cosine similarity between the prompt's vectors" }), heatmap(ins.prompt_similarity),
      el("h3", { text: "Metadata" }), dl];
    parts.push(el("h3", { text: "Compare report" }), r.compare ? el("pre", { text: r.compare }) : el("p", { class: "muted", text: "none (run softprompt compare --out into the prompt's folder)" }));
    out.replaceChildren(...parts);
  } catch (e) {
    out.replaceChildren();
    show("inspect-msg", "Inspect failed: " + e.message);
  }
}

async function unload() {
  const name = $("inspect-prompt").value;
  if (!name) return;
  try {
    await api(`/admin/prompts/${encodeURIComponent(name)}`, { method: "DELETE" });
    $("inspect-out").replaceChildren(el("p", { class: "muted", text: `${name} unloaded (its folder stays on disk)` }));
    await loadModels();
  } catch (e) {
    show("inspect-msg", "Unload failed: " + e.message);
  }
}

// ---- start ---------------------------------------------------------------------------

async function main() {
  buildTry();
  for (const t of document.querySelectorAll(".tab")) t.addEventListener("click", () => setTab(t.dataset.tab));
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const k = $("admin-key").value.trim();
    if (k) sessionStorage.setItem(KEY, k); else sessionStorage.removeItem(KEY);
    $("admin-key").value = "";
    keyState();
  });
  keyState();
  $("try-send").addEventListener("click", sendTry);
  $("try-refresh").addEventListener("click", loadModels);
  $("preview-btn").addEventListener("click", preview);
  $("train-start").addEventListener("click", startTraining);
  $("train-cancel").addEventListener("click", cancelJob);
  $("job-download").addEventListener("click", () => job && downloadZip(job.name));
  $("inspect-btn").addEventListener("click", inspectPrompt);
  $("inspect-download").addEventListener("click", () => $("inspect-prompt").value && downloadZip($("inspect-prompt").value));
  $("inspect-unload").addEventListener("click", unload);
  try {
    info = await api("/playground/api/info");
  } catch (e) {
    show("global-error", "Cannot reach the server: " + e.message);
    return;
  }
  $("model-name").textContent = info.model;
  const tasks = $("train-task");
  for (const t of info.tasks) tasks.append(el("option", { value: t.name, text: `${t.name} (${t.kind.type})` }));
  $("train-limits").textContent = `at most ${info.limits.max_upload_bytes} bytes and ${info.limits.max_upload_rows} rows; 4 rows in 5 train, every fifth validates`;
  if (!info.admin) show("global-error", "This server has no admin key: training, uploads and unloading are off (start it with SOFTPROMPT_ADMIN_KEY or --admin-key-file).");
  else if (!info.can_train) show("global-error", "This server was started without --prompts DIR: it cannot keep trained prompts.");
  await loadModels();
  const base = info.base_name;
  $("try-model-1").value = base;
  // The latest job, if any (a reload keeps watching it).
  try {
    const jobs = (await api("/playground/api/jobs")).data;
    if (jobs.length) { job = jobs[0]; drawJob(); poll(); }
  } catch { /* shown on the next action */ }
  window.addEventListener("unhandledrejection", (e) => show("global-error", String(e.reason && e.reason.message || e.reason)));
}

main();
