// The "Generated artifacts" list: runs newest first, each with its header and
// its files (DESIGN §8). Pure rendering: it builds nodes from data and wires
// buttons to the handlers it is given; it never fetches.

import { archiveUrl, artifactUrl } from "./api.js";
import { h, srOnly } from "./dom.js";
import {
  baseName, exactTime, formatBytes, KIND_LABEL, KIND_ORDER, kindOf, previewMode,
  shortId, timeAgo, timeLeft, toMillis,
} from "./format.js";
import { icon } from "./icons.js";

const DAY_MS = 24 * 60 * 60 * 1000;

/** The states a run shows: live, recent, expiring, expired, kept (DESIGN §8). */
export function runStates(meta, now = Date.now()) {
  const created = toMillis(meta.created_at);
  const expires = toMillis(meta.expires_at);
  const states = [];
  if (meta.status === "active") states.push("live");
  if (now - created < DAY_MS) states.push("recent");
  if (meta.keep) states.push("kept");
  else if (expires <= now) states.push("expired");
  else if (expires - now < DAY_MS) states.push("expiring");
  return states;
}

const STATE_TEXT = {
  live: "live", recent: "recent", expiring: "expiring", expired: "expired", kept: "kept",
};

function stateTitle(state, meta, now) {
  const expires = toMillis(meta.expires_at);
  switch (state) {
    case "live": return "The run is still going: new files appear as agents write them";
    case "recent": return "Created in the last 24 hours";
    case "expiring": return `Expires ${timeLeft(expires, now)} (${exactTime(expires)}) unless kept`;
    case "expired": return "Expired: the next sweep deletes it unless it is kept";
    case "kept": return "Kept: never expires";
    default: return "";
  }
}

function compareText(a, b) {
  return a.localeCompare(b, undefined, { numeric: true, sensitivity: "base" });
}

/** The artifacts of a run in the chosen order: date (newest first), agent or type. */
export function sortEntries(entries, sort) {
  const list = [...entries];
  const byName = (a, b) => compareText(a.filename, b.filename);
  if (sort === "agent") {
    list.sort((a, b) => {
      const ua = a.agent_id === "unknown";
      const ub = b.agent_id === "unknown";
      if (ua !== ub) return ua ? 1 : -1;
      return compareText(a.agent_id, b.agent_id) || byName(a, b);
    });
  } else if (sort === "type") {
    const rank = (e) => KIND_ORDER.indexOf(kindOf(e.content_type, e.filename));
    list.sort((a, b) => rank(a) - rank(b) || byName(a, b));
  } else {
    list.sort((a, b) => toMillis(b.generated_at) - toMillis(a.generated_at) || byName(a, b));
  }
  return list;
}

/** Runs and files left by the search box (file name, agent, workflow; run id too). */
export function applySearch(runs, query) {
  const q = query.trim().toLowerCase();
  if (!q) return runs;
  const out = [];
  for (const run of runs) {
    const meta = run.metadata;
    const runHit = (meta.workflow_id || "").toLowerCase().includes(q)
      || run.run_id.toLowerCase().includes(q);
    const files = runHit ? meta.artifacts : meta.artifacts.filter(
      (a) => a.filename.toLowerCase().includes(q) || a.agent_id.toLowerCase().includes(q));
    if (files.length) out.push({ ...run, metadata: { ...meta, artifacts: files }, total: meta });
  }
  return out;
}

/** The key of a file, for "new file" detection: a rewritten file counts as new. */
export function fileKey(runId, entry) {
  return `${runId}\u0000${entry.filename}\u0000${entry.sha256 || entry.generated_at}`;
}

// -- rendering -----------------------------------------------------------------------

function relTime(iso, prefix = "") {
  const ms = toMillis(iso);
  return h("time", {
    class: "rel-time", datetime: iso, title: `${prefix}${exactTime(ms)}`,
    dataset: { rel: iso },
  }, timeAgo(ms));
}

/** Refresh every relative time in place ("2 min ago" keeps counting). */
export function tickTimes(root, now = Date.now()) {
  for (const el of root.querySelectorAll("time[data-rel]")) {
    const text = timeAgo(toMillis(el.dataset.rel), now);
    if (el.textContent !== text) el.textContent = text;
  }
}

function iconButton({ name, label, title, key, onclick, danger = false }) {
  return h("button", {
    type: "button", class: `btn btn-icon-only${danger ? " btn-quiet-danger" : ""}`,
    "aria-label": label, title, dataset: { key }, onclick,
  }, icon(name));
}

function fileRow(run, entry, { handlers, fresh }) {
  const runId = run.run_id;
  const kind = kindOf(entry.content_type, entry.filename);
  const mode = previewMode(entry.content_type, entry.filename);
  const key = `file:${runId}:${entry.filename}`;
  const slash = entry.filename.lastIndexOf("/");
  const name = h("span", { class: "file-name", title: entry.filename },
    slash >= 0 ? h("span", { class: "file-dir" }, entry.filename.slice(0, slash + 1)) : null,
    h("span", { class: "file-base" }, entry.filename.slice(slash + 1)));

  let first;
  if (mode === "report") {
    first = h("a", {
      class: "btn btn-compact", href: artifactUrl(runId, entry.filename, { view: true }),
      target: "_blank", rel: "noopener noreferrer", dataset: { key: `${key}:open`, report: "1", run: runId, file: entry.filename },
      "aria-label": `Open report ${entry.filename} in a new tab`,
    }, icon("external"), h("span", { class: "btn-text" }, "Open report"));
  } else {
    first = h("button", {
      type: "button", class: "btn btn-compact", dataset: { key: `${key}:preview` },
      "aria-label": `Preview ${entry.filename}`,
      onclick: (e) => handlers.preview(run, entry, e.currentTarget),
    }, icon("eye"), h("span", { class: "btn-text" }, "Preview"));
  }
  const download = h("a", {
    class: "btn btn-icon-only", href: artifactUrl(runId, entry.filename, { download: true }),
    download: baseName(entry.filename), dataset: { key: `${key}:download`, fetchDownload: "1" },
    "aria-label": `Download ${entry.filename}`, title: "Download",
  }, icon("download"));

  return h("li", { class: `file${fresh ? " is-fresh" : ""}`, dataset: { kind } },
    h("span", { class: `file-icon kind-${kind}`, title: KIND_LABEL[kind] }, icon(kind),
      srOnly(`${KIND_LABEL[kind]}: `)),
    name,
    h("span", { class: "file-meta" },
      h("span", { class: `file-agent${entry.agent_id === "unknown" ? " is-unknown" : ""}`,
                  title: `Agent: ${entry.agent_id}` },
        srOnly("by "), entry.agent_id),
      h("span", { class: "file-size" }, formatBytes(entry.size_bytes)),
      h("span", { class: "file-time" }, relTime(entry.generated_at, "Written "))),
    h("span", { class: "file-actions" },
      first,
      download,
      iconButton({ name: "promote", label: `Promote ${entry.filename} to the library`,
                   title: "Promote to library",
                   key: `${key}:promote`, onclick: (e) => handlers.promote(run, entry, e.currentTarget) }),
      iconButton({ name: "trash", label: `Delete ${entry.filename}`, title: "Delete", key: `${key}:delete`, danger: true,
                   onclick: (e) => handlers.deleteFile(run, entry, e.currentTarget) })));
}

function runHeader(run, index, { handlers, now }) {
  const meta = run.total ?? run.metadata; // counts and size of the whole run, even when searched
  const runId = run.run_id;
  const states = runStates(meta, now);
  const size = meta.artifacts.reduce((sum, a) => sum + (a.size_bytes || 0), 0);
  const files = meta.artifacts.length;

  const badges = h("ul", { class: "badges", "aria-label": "State" },
    states.map((s) => h("li", { class: `badge badge-${s}`, title: stateTitle(s, meta, now) },
      s === "kept" ? icon("pin") : h("span", { class: "badge-dot" }), STATE_TEXT[s])));

  const title = h("h3", { class: "run-title", id: `run-${index}-title` },
    srOnly("Run "),
    h("span", { class: "run-id", title: runId }, shortId(runId)));

  const workflow = meta.workflow_id
    ? h("span", { class: "run-workflow", title: `Workflow: ${meta.workflow_id}` }, icon("workflow"),
        srOnly("Workflow "), meta.workflow_id)
    : h("span", { class: "run-workflow is-empty" }, icon("workflow"), "no workflow");

  // Whole on hover (title) and on focus (tabindex: CSS unfolds it on :focus).
  const directive = meta.user_directive
    ? h("p", { class: "run-directive", tabindex: "0", title: meta.user_directive,
               dataset: { key: `run:${runId}:directive` } },
        srOnly("Directive: "), meta.user_directive)
    : null;

  const expires = toMillis(meta.expires_at);
  const facts = h("p", { class: "run-facts" },
    h("span", {}, `${files} ${files === 1 ? "file" : "files"}`),
    h("span", {}, formatBytes(size)),
    meta.keep ? null : h("span", { title: exactTime(expires) },
      expires <= now ? "expired" : `expires ${timeLeft(expires, now)}`));

  const keep = h("button", {
    type: "button", class: "btn btn-compact", dataset: { key: `run:${runId}:keep` },
    "aria-label": `${meta.keep ? "Unkeep" : "Keep"} run ${runId}`,
    title: meta.keep ? "Let this run expire again" : "Keep this run: it never expires",
    onclick: (e) => handlers.keep(run, !meta.keep, e.currentTarget),
  }, icon("pin"), h("span", { class: "btn-text" }, meta.keep ? "Unkeep" : "Keep"));
  // One zip of the whole run (DESIGN §7 /archive); with a token it is fetched, as downloads are.
  const all = files ? h("a", {
    class: "btn btn-compact", href: archiveUrl(runId), download: `${runId}.zip`,
    dataset: { key: `run:${runId}:archive`, fetchDownload: "1" },
    "aria-label": `Download all files of run ${runId} as one zip`, title: "Download all (zip)",
  }, icon("download"), h("span", { class: "btn-text" }, "Download all")) : null;
  const remove = h("button", {
    type: "button", class: "btn btn-compact btn-quiet-danger",
    dataset: { key: `run:${runId}:delete` }, "aria-label": `Delete run ${runId}`,
    onclick: (e) => handlers.deleteRun(run, e.currentTarget),
  }, icon("trash"), h("span", { class: "btn-text" }, "Delete run"));

  return h("header", { class: "run-head" },
    h("div", { class: "run-line" }, title, badges,
      h("span", { class: "run-age" }, relTime(meta.created_at, "Created "))),
    h("div", { class: "run-line run-line-2" }, workflow, directive),
    h("div", { class: "run-line run-line-3" }, facts, h("span", { class: "run-actions" }, all, keep, remove)));
}

/**
 * Build the list of runs. view: {sort, fresh: Set of fileKey, now}.
 * Returns a DocumentFragment.
 */
export function renderRuns(runs, { sort, fresh, now, handlers }) {
  const frag = document.createDocumentFragment();
  runs.forEach((run, index) => {
    const meta = run.metadata;
    const entries = sortEntries(meta.artifacts, sort);
    const states = runStates(run.total ?? meta, now);
    const files = entries.length
      ? h("ul", { class: "files", "aria-label": `Files of run ${run.run_id}` },
          entries.map((e) => fileRow(run, e, { handlers, fresh: fresh.has(fileKey(run.run_id, e)) })))
      : h("p", { class: "state-note run-empty", text: "No files in this run any more." });
    // why a file the agent wrote is not there (DESIGN §2 `rejected`), not only in the logs
    const rejected = (meta.rejected ?? []).length
      ? h("ul", { class: "rejected", "aria-label": `Not kept in run ${run.run_id}` },
          meta.rejected.map((r) => h("li", { title: `Refused ${exactTime(toMillis(r.rejected_at))}` },
            icon("alert"), `not kept: ${r.filename}, ${r.reason}`)))
      : null;
    frag.append(h("article", {
      class: `run${states.includes("live") ? " is-live" : ""}`,
      "aria-labelledby": `run-${index}-title`, dataset: { run: run.run_id },
    }, runHeader(run, index, { handlers, now }), files, rejected));
  });
  return frag;
}
