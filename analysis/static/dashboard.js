// The live page: polls /api/state, fills in each paper table and its Plotly heatmap, and shows
// a clicked cell's trials as Plotly curves. Plotly is the only library; it is served locally.
"use strict";

const POLL_MS = 2000;
let shown = null;          // {table, cell}: the cell whose trials are shown below the tables
let views = {};            // table name -> "table" | "heatmap"
// ?view=heatmap opens every table as a heatmap (a link or a screenshot can ask for it).
const startView = new URLSearchParams(location.search).get("view") === "heatmap" ? "heatmap" : "table";

const fmt = (v, d = 2) => (v === null || v === undefined ? "–" : v.toFixed(d));
const sign = (v) => (v === null || v === undefined ? "–" : (v >= 0 ? "+" : "") + v.toFixed(2));
const el = (tag, attrs = {}, text = "") => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text) e.textContent = text;
  return e;
};
function duration(s) {
  if (s === null || s === undefined) return "–";
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = Math.round(s % 60);
  return h ? `${h} h ${m} min` : m ? `${m} min ${sec} s` : `${sec} s`;
}

// The words in a cell, by state; the hover text carries paper, Δ and the reason.
function cellLines(c) {
  if (c.kind === "paper") return [c.mean === null ? "-" : `${fmt(c.mean)} (paper)`, ""];
  if (c.kind !== "ours") return [c.mean === null ? "-" : fmt(c.mean), ""];
  const done = c.n ? `${fmt(c.mean)}${c.n > 1 ? " ± " + fmt(c.std) : ""} (n=${c.n})` : "";
  if (c.state === "running") {
    const live = c.live.map((t) => `epoch ${t.epoch}/${t.epochs} · ${fmt(t.top1, 1)}`);
    const waiting = c.counts.pending ? `${c.counts.pending} pending` : "";
    return [live.join("; "), done ? `done: ${done}` : waiting];
  }
  if (c.state === "pending") return ["pending", done ? `done: ${done}` : ""];
  if (c.state === "finished") {
    if (c.race_out) return [`${done} · ${c.race_out}`, `best ${fmt(c.best_mean)}`];
    const cmp = c.paper === null ? `best ${fmt(c.best_mean)}`
      : `best ${fmt(c.best_mean)} · paper ${fmt(c.paper)} · Δbest ${sign(c.delta_best)}`;
    return [done, cmp];
  }
  return [c.state, c.reason ? c.reason.slice(0, 60) : ""];
}

function hoverText(c) {
  const parts = [`${c.row} | ${c.column}: ${c.state}`];
  if (c.n) parts.push(`final top-1 ${fmt(c.mean)} ± ${fmt(c.std)} (n=${c.n} of ${c.seeds})`,
                      c.ci_low === null ? "95 % interval: none (one seed)"
                        : `95 % t-interval [${fmt(c.ci_low)}, ${fmt(c.ci_high)}]`,
                      c.top ? "best mean of its block (▲)"
                        : c.tied ? `could be the best: no cell is above it (${c.tie_test}` +
                                   (c.tie_p === null ? ")" : `, simultaneous p = ${c.tie_p.toPrecision(2)})`)
                        : `a cell is above it (${c.tie_test}, simultaneous p = ${fmt(c.tie_p, 3)})`,
                      `best-epoch top-1 ${fmt(c.best_mean)} ± ${fmt(c.best_std)}`);
  if (c.race_out) parts.push(`race: ${c.race_out}; its mean rests on fewer seeds`);
  if (c.paper !== null) parts.push(`paper (best epoch) ${fmt(c.paper)}`,
                                   `Δ best − paper ${sign(c.delta_best)}; Δ final − paper ${sign(c.delta_final)}`);
  if (c.reason) parts.push(c.reason);
  return parts.join("\n");
}

// The server decides ties (analysis.stats): `top` is each block's best final mean, `tied` every
// cell that could be the best (no cell above it by the simultaneous bounds).
function bestCell(t) {
  return t.cells.find((c) => c.top) || null;
}

function renderTable(t, box) {
  const best = bestCell(t);
  const byPos = new Map(t.cells.map((c) => [`${c.row}\u0000${c.column}`, c]));
  const table = el("table", {class: "paper", "data-table": t.name});
  const head = table.insertRow();
  head.appendChild(el("th", {class: "row"}, ""));
  for (const col of t.columns) head.appendChild(el("th", {}, col));
  for (const row of t.rows) {
    const tr = table.insertRow();
    tr.appendChild(el("th", {class: "row"}, row));
    for (const col of t.columns) {
      const c = byPos.get(`${row}\u0000${col}`);
      const td = el("td", c ? {class: "cell", "data-state": c.state, "data-cell": c.id,
                                title: hoverText(c)} : {});
      if (c) {
        const [main, sub] = cellLines(c);
        td.appendChild(document.createTextNode(main));
        if (sub) td.appendChild(el("small", {}, sub));
        if (c.tied) td.classList.add("tied");
        if (c.top) td.classList.add("best");
        td.onclick = () => showCell(t.name, c.id);
      }
      tr.appendChild(td);
    }
  }
  box.appendChild(table);
}

function renderHeatmap(t, box) {
  const div = el("div", {class: "heatmap"});
  box.appendChild(div);
  const best = bestCell(t);
  const z = t.rows.map(() => t.columns.map(() => null));
  const text = t.rows.map(() => t.columns.map(() => ""));
  const hover = t.rows.map(() => t.columns.map(() => ""));
  const ids = t.rows.map(() => t.columns.map(() => null));
  for (const c of t.cells) {
    const i = t.rows.indexOf(c.row), j = t.columns.indexOf(c.column);
    z[i][j] = c.kind === "ours" ? c.best_mean : null;
    const delta = c.delta_best === null ? "" : `<br>Δ ${sign(c.delta_best)}`;
    const star = c.top ? "▲ " : c.tied ? "= " : "";
    text[i][j] = c.kind === "ours" ? (c.best_mean === null ? c.state : `${star}${fmt(c.best_mean)}${delta}`)
      : cellLines(c)[0];
    hover[i][j] = hoverText(c).replaceAll("\n", "<br>");
    ids[i][j] = c.id;
  }
  Plotly.react(div, [{type: "heatmap", z, x: t.columns, y: t.rows, text, customdata: ids,
                      texttemplate: "%{text}", hovertext: hover, hoverinfo: "text",
                      colorscale: "Viridis", colorbar: {title: {text: "best-epoch top-1 (%)"}}}],
               {margin: {l: 220, t: 30, r: 20, b: 60}, height: 120 + 45 * t.rows.length,
                yaxis: {autorange: "reversed", type: "category"},
                xaxis: {type: "category", title: {text: t.name === "table9" ? "p" : ""}},
                title: {text: "best-epoch top-1; Δ vs the paper (also best epoch)",
                        font: {size: 13}}},
               {displaylogo: false, responsive: true});
  div.on("plotly_click", (ev) => {
    const id = ev.points[0].customdata;
    if (id !== null) showCell(t.name, id);
  });
}

function renderTables(state) {
  const root = document.getElementById("tables");
  root.replaceChildren();
  if (state.error) root.appendChild(el("p", {}, state.error));
  for (const t of state.tables) {
    const section = el("section", {id: `t-${t.name}`});
    section.appendChild(el("h2", {}, t.title));
    const tabs = el("div", {class: "tabs"});
    const view = views[t.name] || startView;
    for (const v of ["table", "heatmap"]) {
      const b = el("button", v === view ? {disabled: ""} : {}, v);
      b.onclick = () => { views[t.name] = v; renderTables(state); };
      tabs.appendChild(b);
    }
    for (const f of ["csv", "tex"]) {
      const a = el("a", {href: `/download/${t.name}.${f}`, download: `${t.name}.${f}`},
                   ` ${f.toUpperCase()}`);
      tabs.appendChild(a);
    }
    section.appendChild(tabs);
    const box = el("div");
    section.appendChild(box);
    root.appendChild(section);
    (view === "heatmap" ? renderHeatmap : renderTable)(t, box);
    if (t.resolves && t.resolves.length) {
      const panel = el("div", {class: "resolves", "data-table": t.name});
      panel.appendChild(el("h3", {}, "What this table resolves"));
      const ul = el("ul");
      for (const line of t.resolves) ul.appendChild(el("li", {}, line));
      panel.appendChild(ul);
      section.appendChild(panel);
    }
    if (t.notes.length) {
      const ul = el("ul", {class: "notes"});
      for (const n of t.notes) ul.appendChild(el("li", {}, n));
      section.appendChild(ul);
    }
  }
}

function renderStatus(state) {
  const box = document.getElementById("status");
  const p = state.progress;
  if (!p) { box.textContent = state.error || "no results yet"; return; }
  const order = ["ok", "running", "pending", "error", "diverged", "stopped"];
  const counts = order.filter((k) => p.counts[k]).map((k) => `${p.counts[k]} ${k}`).join(", ");
  box.replaceChildren();
  const line = (label, value) => {
    const s = el("span"); s.appendChild(el("b", {}, label + " ")); s.appendChild(
      document.createTextNode(value + "   ")); box.appendChild(s);
  };
  line(state.live ? "LIVE" : "FINISHED (static)", "");
  line("trials", `${p.total}: ${counts || "none"}`);
  line("elapsed", duration(p.elapsed_s));
  line("trials/hour", fmt(p.trials_per_hour, 1));
  line("mean trial", duration(p.mean_trial_s));
  line("ETA", state.live ? duration(p.eta_s) : "done");
  line("GPU-hours", `${fmt(p.gpu_hours, 3)} used, ${fmt(p.gpu_hours_projected, 3)} projected`);
  document.getElementById("source").textContent = ` ${state.results}`;
}

function renderLinks(state) {
  const ul = document.getElementById("links");
  ul.replaceChildren();
  for (const l of state.links) {
    const li = el("li");
    li.appendChild(el("b", {}, l.view + ": "));
    li.appendChild(el("code", {}, l.command));
    li.appendChild(document.createTextNode(` → ${l.url}`));
    ul.appendChild(li);
  }
}

async function showCell(table, id) {
  shown = {table, cell: id};
  const r = await fetch(`/api/trials?table=${encodeURIComponent(table)}&cell=${id}`);
  const box = document.getElementById("detail");
  if (!r.ok) { box.textContent = `cannot load the cell: ${r.status}`; return; }
  const data = await r.json();
  const c = data.cell;
  box.replaceChildren(el("h2", {}, `${c.row} | ${c.column}: ${c.state}`));
  box.appendChild(el("p", {}, hoverText(c).split("\n").slice(1).join(" · ")));
  for (const t of data.trials.filter((t) => t.error)) {
    box.appendChild(el("p", {}, `seed ${t.seed} (${t.trial_id}): ${t.status}`));
    box.appendChild(el("pre", {class: "err"}, t.error));
  }
  const top = el("div"), loss = el("div");
  box.append(top, loss);
  const traces = (keys) => data.trials.flatMap((t) => keys.map((k) => ({
    x: t.epoch, y: t[k], mode: "lines+markers", name: `seed ${t.seed} ${k} (${t.status})`})));
  const layout = (title, y) => ({title: {text: title, font: {size: 13}}, height: 300,
                                 margin: {t: 40, b: 40}, xaxis: {title: {text: "epoch"}},
                                 yaxis: {title: {text: y}}});
  Plotly.react(top, traces(["top1", "best_top1"]), layout("top-1 per epoch", "%"),
               {displaylogo: false});
  Plotly.react(loss, traces(["loss_s", "loss_g", "loss_bns"]), layout("losses per epoch", "loss"),
               {displaylogo: false});
}

async function poll() {
  let state = null;
  try {
    const r = await fetch("/api/state", {cache: "no-store"});
    state = await r.json();
  } catch (e) {
    document.getElementById("status").textContent = `server unreachable (${e}); retrying`;
  }
  if (state) {
    renderStatus(state);
    renderTables(state);
    renderLinks(state);
    if (shown && state.live) showCell(shown.table, shown.cell);
  }
  // A finished results directory is static: one load is the whole story.
  if (!state || state.live) setTimeout(poll, POLL_MS);
}

poll();
