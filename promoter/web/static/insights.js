// The Insights panel (issue 16): what the agents produce, who fills the disk,
// what expires next, from GET /runtime/stats (DESIGN §7).
//
// Charts are inline SVG built with createElementNS; every label is a Text node
// (agent ids and workflow names are agent-controlled). Each chart has a text
// summary (role=img + aria-label) and a table alternative in a <details>.
// Clicking an agent or a workflow narrows the run list to it (the "facet",
// kept in the page address as ?agent= or ?workflow=).

import { errorOf, request } from "./api.js";
import { h, replaceChildren } from "./dom.js";
import { formatBytes, KIND_LABEL, KIND_ORDER, kindOf, shortId } from "./format.js";

const SVG_NS = "http://www.w3.org/2000/svg";
const REFRESH_MS = 10_000;
const SINCE_CHOICES = [["1d", "Last 24 h"], ["7d", "Last 7 days"], ["30d", "Last 30 days"],
  ["90d", "Last 90 days"], ["365d", "Last year"]];
const MAX_BARS = 400;
const LIST_ROWS = 8;
const DAY_MS = 86_400_000;
const COUNT = new Intl.NumberFormat("en-US");

const $ = (id) => document.getElementById(id);

/** An SVG element; attributes set one by one, text only as a Text node. */
function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value !== null && value !== undefined) el.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) {
      el.append(child instanceof Node ? child : String(child));
    }
  }
  return el;
}

function plural(n, one, many) {
  return `${COUNT.format(n)} ${n === 1 ? one : many}`;
}

function pct(part, whole) {
  return whole > 0 ? (100 * part) / whole : 0;
}

function pctText(part, whole) {
  const p = pct(part, whole);
  return p > 0 && p < 1 ? "<1%" : `${Math.round(p)}%`;
}

// -- the facet: the run list narrowed to one agent or one workflow ---------------------

/** { kind: "agent"|"workflow", value } from the page address, or null. */
export function facetFromParams(params) {
  if (params.has("agent")) return { kind: "agent", value: params.get("agent") };
  if (params.has("workflow")) return { kind: "workflow", value: params.get("workflow") };
  return null;
}

/** Write the facet into URLSearchParams (for history.replaceState). */
export function writeFacetParams(params, facet) {
  params.delete("agent");
  params.delete("workflow");
  if (facet) params.set(facet.kind, facet.value);
}

/** Runs of that workflow, or only the files of that agent (runs without one drop out). */
export function applyFacet(runs, facet) {
  if (!facet) return runs;
  if (facet.kind === "workflow") {
    return runs.filter((run) => (run.metadata.workflow_id || "") === facet.value);
  }
  const out = [];
  for (const run of runs) {
    const files = run.metadata.artifacts.filter((a) => a.agent_id === facet.value);
    if (files.length) {
      out.push({ ...run, metadata: { ...run.metadata, artifacts: files },
                 total: run.total ?? run.metadata });
    }
  }
  return out;
}

function workflowName(key) {
  return key === "" ? "no workflow" : key;
}

/** "agent visualization_agent" / "workflow etl": how the facet is said. */
export function facetLabel(facet) {
  return facet.kind === "agent" ? `agent ${facet.value}` : `workflow ${workflowName(facet.value)}`;
}

/** The line above the runs that says the list is narrowed, with a way back. */
export function renderFacetNote(el, facet, onClear) {
  const key = facet ? `${facet.kind}\u0000${facet.value}` : "";
  if (el.dataset.facet === key && (key !== "") === !el.hidden) return; // unchanged: keep focus
  el.dataset.facet = key;
  if (!facet) {
    el.hidden = true;
    replaceChildren(el);
    return;
  }
  el.hidden = false;
  replaceChildren(el, h("span", {}, `Showing only the ${facet.kind === "agent" ? "files" : "runs"} of `,
    h("strong", { text: facetLabel(facet) }), "."),
  h("button", { type: "button", class: "btn btn-compact facet-clear", dataset: { key: "facet:clear" },
                onclick: onClear }, "Show all"));
}

// -- charts --------------------------------------------------------------------------

function tableOf(caption, head, rows) {
  return h("details", { class: "ins-table" },
    h("summary", { dataset: { key: `table:${caption}` } }, "Show as a table"),
    h("div", { class: "ins-table-scroll" },
      h("table", {},
        h("caption", { class: "visually-hidden", text: caption }),
        h("thead", {}, h("tr", {}, head.map((c, i) => h("th", { scope: "col", class: i ? "num" : "" }, c)))),
        h("tbody", {}, rows.map((row) => h("tr", {},
          row.map((c, i) => (i === 0 ? h("th", { scope: "row" }, c) : h("td", { class: "num" }, c)))))))));
}

function figure(title, id, ...body) {
  return h("section", { class: "ins-card", "aria-labelledby": id },
    h("h3", { class: "ins-title", id, text: title }), ...body);
}

function tiles(t) {
  const tile = (label, value, detail, key) => h("div", { class: "ins-tile", dataset: { tile: key } },
    h("dt", { text: label }), h("dd", {}, h("span", { class: "ins-tile-value", text: value }),
      detail ? h("span", { class: "ins-tile-detail", text: detail }) : null));
  return h("dl", { class: "ins-tiles" },
    tile("Stored", formatBytes(t.bytes), `${plural(t.artifacts, "file", "files")} in ${plural(t.runs, "run", "runs")}`, "bytes"),
    tile("Kept", formatBytes(t.kept_bytes), plural(t.kept_runs, "run", "runs"), "kept"),
    tile("Expiring in 24 h", formatBytes(t.expiring_24h_bytes), "deleted at the next sweep", "expiring24"),
    tile("Expiring in 7 days", formatBytes(t.expiring_7d_bytes), "unless kept", "expiring7"));
}

function dayKey(ms) {
  return new Date(ms).toISOString().slice(0, 10);
}

function dayLabel(key) {
  const d = new Date(`${key}T00:00:00Z`);
  return d.toLocaleDateString("en-US", { month: "short", day: "numeric", timeZone: "UTC" });
}

/**
 * The window's days, ending today (UTC), at most MAX_BARS. Days are the files'
 * own times (source mtimes): one dated outside the window is in the table only.
 */
function dayRange(sinceDays, now) {
  const today = Date.parse(`${dayKey(now)}T00:00:00Z`);
  const count = Math.max(1, Math.min(sinceDays + 1, MAX_BARS)); // N days touch N + 1 dates
  const days = [];
  for (let i = count - 1; i >= 0; i -= 1) days.push(dayKey(today - i * DAY_MS));
  return days;
}

function perDayChart(stats, sinceDays, now) {
  const byDay = new Map(stats.per_day.map((d) => [d.day, d]));
  const days = dayRange(sinceDays, now);
  const kindsSeen = new Set();
  const split = new Map();
  for (const d of stats.per_day) {
    const kinds = new Map();
    for (const [type, bytes] of Object.entries(d.by_type || {})) {
      const kind = type === "other" ? "other" : kindOf(type);
      kinds.set(kind, (kinds.get(kind) || 0) + bytes);
      if (bytes > 0) kindsSeen.add(kind);
    }
    split.set(d.day, kinds);
  }
  const max = Math.max(1, ...days.map((k) => byDay.get(k)?.bytes || 0));
  const W = days.length * 10;
  const H = 100;
  const chart = svg("svg", { class: "ins-bars-svg", viewBox: `0 0 ${W} ${H}`,
                             preserveAspectRatio: "none", "aria-hidden": "true", focusable: "false" });
  for (const y of [0, 50]) {
    chart.append(svg("line", { x1: 0, x2: W, y1: y + 0.5, y2: y + 0.5, class: "ins-grid",
                               "vector-effect": "non-scaling-stroke" }));
  }
  days.forEach((key, i) => {
    const d = byDay.get(key);
    if (!d || d.bytes === 0) return;
    const group = svg("g", {}, svg("title", {}, `${dayLabel(key)}: ${formatBytes(d.bytes)}, ${plural(d.artifacts, "file", "files")}`));
    let y = H;
    const kinds = split.get(key) || new Map();
    for (const kind of KIND_ORDER) {
      const bytes = kinds.get(kind) || 0;
      if (!bytes) continue;
      const height = (bytes / max) * H;
      y -= height;
      group.append(svg("rect", { x: i * 10 + 1.5, y, width: 7, height: Math.max(height, 0.6),
                                 class: `ins-k ins-k-${kind}` }));
    }
    chart.append(group);
  });
  const drawn = new Set(days);
  const busiest = stats.per_day.filter((d) => drawn.has(d.day))
    .reduce((a, d) => (d.bytes > (a?.bytes ?? -1) ? d : a), null);
  const summary = busiest
    ? `Bytes promoted per day over ${plural(days.length, "day", "days")}; the busiest day was ${dayLabel(busiest.day)} with ${formatBytes(busiest.bytes)}.`
    : "Nothing was promoted in this period.";
  const legend = h("ul", { class: "ins-legend" },
    KIND_ORDER.filter((k) => kindsSeen.has(k)).map((k) => h("li", {},
      h("span", { class: `ins-swatch ins-sw-${k}`, "aria-hidden": "true" }), KIND_LABEL[k] === "File" ? "Other" : KIND_LABEL[k])));
  return figure("Bytes per day, by type", "ins-day-title",
    h("div", { class: "ins-chart", role: "img", "aria-label": summary },
      h("div", { class: "ins-axis-y", "aria-hidden": "true" },
        h("span", { text: formatBytes(max) }), h("span", { text: formatBytes(max / 2) }), h("span", { text: "0" })),
      h("div", { class: "ins-plot" }, chart,
        h("div", { class: "ins-axis-x", "aria-hidden": "true" },
          h("span", { text: dayLabel(days[0]) }),
          days.length > 2 ? h("span", { text: dayLabel(days[Math.floor(days.length / 2)]) }) : null,
          h("span", { text: dayLabel(days[days.length - 1]) })))),
    legend,
    tableOf("Bytes promoted per day (UTC)", ["Day", "Files", "Size", "Bytes"],
      stats.per_day.map((d) => [d.day, COUNT.format(d.artifacts), formatBytes(d.bytes), COUNT.format(d.bytes)])));
}

function ring(t) {
  const other = Math.max(0, t.bytes - t.kept_bytes - t.expiring_24h_bytes);
  const parts = [
    ["kept", "Kept", t.kept_bytes],
    ["expiring", "Expiring in 24 h", t.expiring_24h_bytes],
    ["other", "Other", other],
  ];
  const R = 15.915494; // circumference 100: dash lengths are percentages
  const chart = svg("svg", { class: "ins-ring-svg", viewBox: "0 0 42 42", "aria-hidden": "true", focusable: "false" },
    svg("circle", { cx: 21, cy: 21, r: R, class: "ins-ring-track" }));
  let offset = 25; // start at 12 o'clock
  for (const [key, , bytes] of parts) {
    const share = pct(bytes, t.bytes);
    if (share <= 0) continue;
    const p = Math.max(share, 1.2); // a sliver stays visible; the legend has the true share
    chart.append(svg("circle", { cx: 21, cy: 21, r: R, class: `ins-ring-part ins-ring-${key}`,
                                 "stroke-dasharray": `${p} ${100 - p}`, "stroke-dashoffset": offset }));
    offset -= p;
  }
  chart.append(svg("text", { x: 21, y: 20.5, class: "ins-ring-value" }, formatBytes(t.bytes)),
    svg("text", { x: 21, y: 26, class: "ins-ring-label" }, "stored"));
  const summary = parts.map(([, label, bytes]) => `${label} ${formatBytes(bytes)} (${pctText(bytes, t.bytes)})`).join(", ");
  return figure("Kept, expiring, other", "ins-ring-title",
    h("div", { class: "ins-ring", role: "img", "aria-label": `Of ${formatBytes(t.bytes)} stored: ${summary}.` },
      chart,
      h("ul", { class: "ins-ring-legend" }, parts.map(([key, label, bytes]) => h("li", { dataset: { part: key } },
        h("span", { class: `ins-swatch ins-sw-ring-${key}`, "aria-hidden": "true" }),
        h("span", { class: "ins-ring-name", text: label }),
        h("span", { class: "ins-ring-num", text: `${formatBytes(bytes)} · ${pctText(bytes, t.bytes)}` }))))),
    tableOf("Stored bytes: kept, expiring within 24 hours, other", ["Part", "Size", "Bytes", "Share"],
      parts.map(([, label, bytes]) => [label, formatBytes(bytes), COUNT.format(bytes), pctText(bytes, t.bytes)])));
}

function bar(value, max, kind) {
  return svg("svg", { class: "ins-meter", viewBox: "0 0 100 6", preserveAspectRatio: "none",
                      "aria-hidden": "true", focusable: "false" },
    svg("rect", { x: 0, y: 0, width: 100, height: 6, rx: 3, class: "ins-meter-track" }),
    svg("rect", { x: 0, y: 0, width: Math.max(pct(value, max), value > 0 ? 1.5 : 0), height: 6, rx: 3,
                  class: `ins-meter-fill ins-meter-${kind}` }));
}

/** Agents or workflows by bytes: each a button that narrows the run list to it. */
function barList(title, id, kind, buckets, onFacet) {
  const max = Math.max(1, ...buckets.map((b) => b.bytes));
  const full = buckets.length > 20; // the 21st is the rest, not a key (DESIGN §7)
  const name = (b) => (kind === "workflow" ? workflowName(b.key) : b.key);
  const shown = buckets.slice(0, LIST_ROWS);
  const hiddenCount = buckets.length - shown.length;
  const rows = shown.map((b, i) => {
    const rest = full && i === buckets.length - 1;
    const label = rest ? "all the others" : name(b);
    return h("li", { class: "ins-row" },
      rest ? h("span", { class: "ins-row-name ins-row-rest", text: label })
        : h("button", { type: "button", class: "ins-row-name ins-link", dataset: { key: `facet:${kind}:${b.key}` },
                        "aria-label": `Show the runs of ${kind} ${label}`, title: label,
                        onclick: () => onFacet({ kind, value: b.key }) }, label),
      h("span", { class: "ins-row-num", text: `${formatBytes(b.bytes)} · ${plural(b.artifacts, "file", "files")}` }),
      bar(b.bytes, max, kind));
  });
  const more = hiddenCount > 0
    ? h("p", { class: "ins-more", text: `and ${plural(hiddenCount, "more", "more")}: see the table` }) : null;
  const label = kind === "agent" ? "Agent" : "Workflow";
  return figure(title, id,
    buckets.length ? h("ol", { class: "ins-rows" }, rows) : h("p", { class: "ins-empty", text: "None in this period." }),
    more,
    tableOf(`${title}, largest first`, [label, "Files", "Size", "Bytes"],
      buckets.map((b, i) => [full && i === buckets.length - 1 ? "all the others" : name(b),
        COUNT.format(b.artifacts), formatBytes(b.bytes), COUNT.format(b.bytes)])));
}

function largestRuns(runs) {
  const top = runs.slice(0, 5);
  const max = Math.max(1, ...top.map((r) => r.bytes));
  return figure("Largest runs", "ins-largest-title",
    top.length ? h("ol", { class: "ins-rows" }, top.map((r) => h("li", { class: "ins-row" },
      h("a", { class: "ins-row-name ins-link", href: `/?run=${encodeURIComponent(r.run_id)}`, title: r.run_id,
               dataset: { key: `run:${r.run_id}` },
               "aria-label": `Run ${r.run_id}` }, shortId(r.run_id)),
      h("span", { class: "ins-row-num", text: formatBytes(r.bytes) }),
      bar(r.bytes, max, "run")))) : h("p", { class: "ins-empty", text: "None in this period." }),
    tableOf("The five largest runs", ["Run", "Size", "Bytes"],
      top.map((r) => [r.run_id, formatBytes(r.bytes), COUNT.format(r.bytes)])));
}

function refused(byReason) {
  const entries = Object.entries(byReason || {});
  if (!entries.length) return null;
  const total = entries.reduce((n, [, c]) => n + c, 0);
  return figure("Files refused", "ins-refused-title",
    h("p", { class: "ins-sub", text: `${plural(total, "file", "files")} an agent wrote could not be kept, by reason:` }),
    h("ul", { class: "ins-refused" }, entries.map(([reason, count]) => h("li", {},
      h("span", { text: reason }), h("span", { class: "ins-row-num", text: COUNT.format(count) })))));
}

/** The whole panel body for one answer of GET /runtime/stats. */
export function renderStats(stats, { sinceDays, onFacet, now = Date.now() }) {
  const t = stats.totals;
  return h("div", { class: "ins-body" },
    tiles(t),
    h("div", { class: "ins-grid-2" }, perDayChart(stats, sinceDays, now), ring(t)),
    h("div", { class: "ins-grid-3" },
      barList("Agents by bytes", "ins-agents-title", "agent", stats.by_agent, onFacet),
      barList("Workflows by bytes", "ins-workflows-title", "workflow", stats.by_workflow, onFacet),
      largestRuns(stats.largest_runs)),
    refused(stats.rejected_by_reason));
}

// -- the panel -----------------------------------------------------------------------

/**
 * Wire the Insights panel: the show/hide button, the period, the refresh while
 * open. `onFacet(facet)` narrows the run list. Open state lives in ?insights=1.
 */
export function mountInsights({ onFacet }) {
  const toggle = $("insights-toggle");
  const body = $("insights-body");
  const select = $("insights-since");
  const params = new URLSearchParams(location.search);
  const since = SINCE_CHOICES.some(([v]) => v === params.get("since")) ? params.get("since") : "30d";
  replaceChildren(select, SINCE_CHOICES.map(([value, label]) => h("option", { value, text: label })));
  select.value = since;
  let timer = null;
  let seq = 0;
  let lastText = "";

  function setParam(key, value) {
    const next = new URLSearchParams(location.search);
    if (value === null) next.delete(key); else next.set(key, value);
    const qs = next.toString();
    history.replaceState(null, "", `${location.pathname}${qs ? `?${qs}` : ""}${location.hash}`);
  }

  async function load() {
    const mine = ++seq;
    body.setAttribute("aria-busy", "true");
    try {
      const res = await request(`/runtime/stats?since=${encodeURIComponent(select.value)}`);
      if (!res.ok) throw await errorOf(res);
      const text = await res.text();
      if (mine !== seq || toggle.getAttribute("aria-expanded") !== "true") return;
      // unchanged figures: leave the panel (and the focus, and open tables) alone
      if (text === lastText && text && body.querySelector(".ins-body")) return;
      lastText = text;
      const stats = JSON.parse(text);
      const focusKey = body.contains(document.activeElement) ? document.activeElement?.dataset?.key : null;
      const openTables = [...body.querySelectorAll("details[open] caption")].map((c) => c.textContent);
      replaceChildren(body, renderStats(stats, { sinceDays: parseInt(select.value, 10), onFacet }));
      for (const c of body.querySelectorAll("details caption")) {
        if (openTables.includes(c.textContent)) c.closest("details").open = true;
      }
      if (focusKey) body.querySelector(`[data-key="${CSS.escape(focusKey)}"]`)?.focus({ preventScroll: true });
      $("insights-summary").textContent = `${plural(stats.totals.runs, "run", "runs")} · ${formatBytes(stats.totals.bytes)} · ${select.selectedOptions[0].textContent.toLowerCase()}`;
    } catch (err) {
      if (mine !== seq) return;
      replaceChildren(body, h("p", { class: "state-note state-error", role: "alert",
                                     text: `The figures could not be loaded: ${err.message}` }));
    } finally {
      if (mine === seq) body.setAttribute("aria-busy", "false");
    }
  }

  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(async () => {
      if (!document.hidden) await load();
      if (toggle.getAttribute("aria-expanded") === "true") schedule();
    }, REFRESH_MS);
  }

  function setOpen(open) {
    toggle.setAttribute("aria-expanded", String(open));
    toggle.lastChild.textContent = open ? "Hide insights" : "Show insights";
    $("insights-controls").hidden = !open;
    body.hidden = !open;
    setParam("insights", open ? "1" : null);
    clearTimeout(timer);
    if (open) {
      if (!body.firstChild) replaceChildren(body, h("p", { class: "state-note", text: "Loading the figures…" }));
      load();
      schedule();
    }
  }

  toggle.prepend(svg("svg", { class: "icon", viewBox: "0 0 24 24", "aria-hidden": "true", focusable: "false" },
    svg("path", { d: "M5 20V11M10 20V5M15 20v-7M20 20V8M3 20.5h18" })));
  toggle.addEventListener("click", () => setOpen(toggle.getAttribute("aria-expanded") !== "true"));
  select.addEventListener("change", () => {
    lastText = "";
    setParam("since", select.value === "30d" ? null : select.value);
    load();
  });
  setOpen(params.get("insights") === "1");
}
