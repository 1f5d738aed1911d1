// The artifact browser (DESIGN §8): state, the live poll, and the actions.
// Filter, sort and search live in the page address (?filter=, ?sort=, ?q=; ?run=ID
// names the current run), so a view can be linked.
// Rendering lives in runs.js and library.js, dialogs in dialogs.js, the API in
// api.js. Agent-controlled text only ever reaches the DOM as text.

import * as api from "./api.js";
import * as dialogs from "./dialogs.js";
import { h, replaceChildren } from "./dom.js";
import { formatBytes, shortId } from "./format.js";
import { icon } from "./icons.js";
import { applyFacet, facetFromParams, facetLabel, mountInsights, renderFacetNote,
  writeFacetParams } from "./insights.js";
import { renderLibrary } from "./library.js";
import { applySearch, fileKey, renderRuns, tickTimes } from "./runs.js";

const $ = (id) => document.getElementById(id);
const FILTERS = ["all", "current", "recent", "expiring"];
const SORTS = ["date", "agent", "type"];
const POLL_MS = 1000; // without the event stream: a promoted file must show within 2 s (DESIGN §8)
const HIDDEN_POLL_MS = 5000;
const STREAM_CHECK_MS = 60_000; // with the stream: a safety-net look, changes arrive as events
const STREAM_RETRY_MS = [1000, 2000, 5000, 10_000, 30_000]; // reconnection back-off
const LIBRARY_EVERY = 3; // polls
const FRESH_MS = 6000;

const params = new URLSearchParams(location.search);
const state = {
  runParam: params.get("run") || "",
  filter: FILTERS.includes(params.get("filter")) ? params.get("filter")
    : params.get("run") ? "current" : "all",
  sort: SORTS.includes(params.get("sort")) ? params.get("sort") : "date",
  query: params.get("q") || "",
  facet: facetFromParams(params), // one agent or workflow, chosen in Insights
  runs: null, // null until the first answer
  etag: "",
  etagFor: "",
  error: null,
  known: new Set(),
  knownFor: "",
  fresh: new Map(), // fileKey -> time it stops being highlighted
  library: null,
  libEtag: "",
  libError: null,
  libFresh: new Map(),
  libDirty: false,
  streaming: false, // the event stream is open: no polling (DESIGN §8)
  lastEventId: "",
};

// -- small helpers ---------------------------------------------------------------------

function viewKey() {
  return `${state.filter}\u0000${state.filter === "current" ? state.runParam : ""}`;
}

function fillIcons(root = document) {
  for (const slot of root.querySelectorAll("[data-icon]")) {
    if (!slot.firstChild) slot.append(icon(slot.dataset.icon));
  }
}

/** A short message at the bottom of the screen, also said by screen readers. */
function toast(text, kind = "ok") {
  const el = h("div", { class: `toast toast-${kind}` },
    icon(kind === "error" ? "alert" : "logo"), h("span", {}, text));
  $("toasts").append(el);
  setTimeout(() => el.remove(), kind === "error" ? 10000 : 6000);
}

/** New files, said once by screen readers (aria-live). */
function announce(text) {
  const el = $("announcer");
  el.textContent = "";
  // a new text node in a live region is what screen readers pick up
  requestAnimationFrame(() => { el.textContent = text; });
}

function setConn(kind, text) {
  const conn = $("conn");
  conn.dataset.state = kind;
  $("conn-text").textContent = text;
}

function syncUrl() {
  const next = new URLSearchParams(location.search);
  if (state.filter === "all") next.delete("filter"); else next.set("filter", state.filter);
  if (state.sort === "date") next.delete("sort"); else next.set("sort", state.sort);
  if (state.query.trim()) next.set("q", state.query); else next.delete("q");
  writeFacetParams(next, state.facet);
  const qs = next.toString();
  history.replaceState(null, "", `${location.pathname}${qs ? `?${qs}` : ""}${location.hash}`);
}

// -- rendering -------------------------------------------------------------------------

function emptyState(title, text) {
  return h("div", { class: "empty" }, icon("inbox", "empty-icon"),
    h("p", { class: "empty-title", text: title }),
    h("p", { class: "empty-text", text }));
}

function emptyForFilter() {
  switch (state.filter) {
    case "current":
      return state.runParam
        ? emptyState(`No run ${state.runParam}`,
            "The run named in the page address is not in the store (yet). Its files appear here as soon as an agent writes one.")
        : emptyState("No run in progress",
            "Runs that are still going show here. Add ?run=RUN_ID to the page address to follow one run.");
    case "recent":
      return emptyState("No run in the last 24 hours", "Older runs are under All runs.");
    case "expiring":
      return emptyState("Nothing expires within a day", "Runs that are not kept are deleted when their retention ends.");
    default:
      return emptyState("No artifacts yet",
        "Files agents write into sessions/<run>/output/ appear here within a second or two.");
  }
}

function errorState(err) {
  if (err.status === 401) {
    return h("div", { class: "empty empty-error" }, icon("alert", "empty-icon"),
      h("p", { class: "empty-title", text: "An access token is needed" }),
      h("p", { class: "empty-text", text: "This promoter only answers requests that carry its token." }),
      h("button", { type: "button", class: "btn btn-primary", dataset: { key: "token:retry" },
                    onclick: () => { api.resetTokenPrompt(); kick(); } }, "Enter token"));
  }
  return h("div", { class: "empty empty-error", role: "alert" }, icon("alert", "empty-icon"),
    h("p", { class: "empty-title", text: "The artifacts could not be loaded" }),
    h("p", { class: "empty-text", text: `${err.message} Trying again every few seconds.` }));
}

function renderSummary(runs) {
  const summary = $("artifacts-summary");
  if (!runs) {
    summary.textContent = "Files agents wrote, grouped by run, newest first";
    return;
  }
  const files = runs.reduce((n, r) => n + r.metadata.artifacts.length, 0);
  const bytes = runs.reduce((n, r) => n + r.metadata.artifacts.reduce((m, a) => m + a.size_bytes, 0), 0);
  summary.textContent = `${runs.length} ${runs.length === 1 ? "run" : "runs"} · `
    + `${files} ${files === 1 ? "file" : "files"} · ${formatBytes(bytes)}`;
}

function renderFilterNote() {
  const note = $("filter-note");
  if (state.filter === "current") {
    note.textContent = state.runParam
      ? `Following run ${state.runParam}, named in the page address.`
      : "Runs still in progress (status active).";
    note.hidden = false;
  } else {
    note.hidden = true;
  }
  for (const button of document.querySelectorAll("[data-filter]")) {
    button.setAttribute("aria-pressed", String(button.dataset.filter === state.filter));
  }
  $("sort").value = state.sort;
}

function keepFocus(container, build) {
  const active = document.activeElement;
  const key = container.contains(active) ? active?.dataset?.key : null;
  build();
  if (key) dialogs.byKey(key)?.focus({ preventScroll: true });
}

function render() {
  const now = Date.now();
  for (const [key, until] of state.fresh) if (until <= now) state.fresh.delete(key);
  renderFilterNote();
  renderFacetNote($("facet-note"), state.facet, () => setFacet(null));
  renderSummary(state.runs);
  const box = $("runs");
  box.setAttribute("aria-busy", String(state.runs === null && !state.error));
  keepFocus(box, () => {
    if (state.runs === null) {
      replaceChildren(box, state.error ? errorState(state.error)
        : h("p", { class: "state-note", text: "Loading artifacts…" }));
      return;
    }
    const banner = state.error ? h("p", { class: "banner", role: "alert" }, icon("alert"),
      h("span", {}, `${state.error.message} Showing the last list received; retrying every second.`)) : null;
    if (state.runs.length === 0) {
      replaceChildren(box, banner, emptyForFilter());
      return;
    }
    const shown = applyFacet(applySearch(state.runs, state.query), state.facet);
    if (shown.length === 0) {
      replaceChildren(box, banner, state.query.trim()
        ? emptyState(`Nothing matches “${state.query.trim()}”`,
          "The search looks at file names, agents and workflows of the runs shown.")
        : emptyState(`No run of ${facetLabel(state.facet)} here`,
          "Try All runs, or Show all to leave this view."));
      return;
    }
    replaceChildren(box, banner, renderRuns(shown, {
      sort: state.sort, now, handlers,
      fresh: new Set(state.fresh.keys()),
    }));
  });
}

function renderLibraryBox() {
  const box = $("library");
  const now = Date.now();
  for (const [key, until] of state.libFresh) if (until <= now) state.libFresh.delete(key);
  keepFocus(box, () => {
    if (state.library === null) {
      replaceChildren(box, state.libError
        ? h("p", { class: "state-note state-error", role: "alert",
                   text: `The library could not be loaded: ${state.libError.message}` })
        : h("p", { class: "state-note", text: "Loading the library…" }));
      return;
    }
    replaceChildren(box, renderLibrary(state.library, {
      fresh: new Set(state.libFresh.keys()), onDelete: deleteLibraryFile }));
  });
}

// -- the live poll (If-None-Match: an unchanged list costs a 304) -----------------------

function absorb(runs, want) {
  const firstLook = state.knownFor !== want;
  const arrivals = new Map(); // run id -> new file names
  for (const run of runs) {
    for (const entry of run.metadata.artifacts) {
      const key = fileKey(run.run_id, entry);
      if (state.known.has(key)) continue;
      state.known.add(key);
      if (firstLook) continue;
      state.fresh.set(key, Date.now() + FRESH_MS);
      if (!arrivals.has(run.run_id)) arrivals.set(run.run_id, []);
      arrivals.get(run.run_id).push(entry.filename);
    }
  }
  state.knownFor = want;
  if (arrivals.size) {
    const parts = [...arrivals].map(([runId, names]) => names.length === 1
      ? `New file ${names[0]} in run ${shortId(runId)}.`
      : `${names.length} new files in run ${shortId(runId)}.`);
    announce(parts.join(" "));
  }
}

async function refreshRuns() {
  const want = viewKey();
  try {
    const res = await api.listArtifacts({
      filter: state.filter,
      runId: state.filter === "current" ? state.runParam : "",
      etag: state.etagFor === want ? state.etag : "",
    });
    if (viewKey() !== want) return; // the filter changed meanwhile: the next poll asks again
    const hadError = state.error !== null;
    state.error = null;
    if (!res.notModified) {
      absorb(res.runs, want);
      state.runs = res.runs;
      state.etag = res.etag;
      state.etagFor = want;
      render();
    } else if (hadError) {
      render();
    }
    setConn("live", "Live");
  } catch (err) {
    if (viewKey() !== want) return;
    const first = state.error === null;
    state.error = err;
    if (err.status === 401) setConn("error", "Token needed");
    else setConn("error", "Offline, retrying");
    if (first || state.runs === null) render();
  }
}

async function refreshLibrary() {
  try {
    const res = await api.listLibrary({ etag: state.libEtag });
    state.libError = null;
    if (res.notModified) return;
    if (state.library !== null) {
      const before = new Set(state.library.map((f) => `${f.name}\u0000${f.modified_at}`));
      for (const f of res.files) {
        if (!before.has(`${f.name}\u0000${f.modified_at}`)) state.libFresh.set(f.name, Date.now() + FRESH_MS);
      }
    }
    state.library = res.files;
    state.libEtag = res.etag;
    const bytes = res.files.reduce((n, f) => n + f.size_bytes, 0);
    $("library-summary").textContent = res.files.length === 0 ? "Curated files you keep"
      : `${res.files.length} curated ${res.files.length === 1 ? "file" : "files"} · ${formatBytes(bytes)}`;
    renderLibraryBox();
  } catch (err) {
    state.libError = err;
    if (state.library === null) renderLibraryBox();
  }
}

let wake = null;
let kicked = false;
/** Poll now instead of at the next tick (after an action or a change of filter). */
function kick() {
  kicked = true;
  wake?.();
}

function nap(ms) {
  if (kicked) {
    kicked = false;
    return Promise.resolve();
  }
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      wake = null;
      kicked = false;
      resolve();
    };
    const timer = setTimeout(done, ms);
    wake = done;
  });
}

async function pollLoop() {
  for (let tick = 0; ; tick += 1) {
    if (!(api.tokenDeclined() && state.error?.status === 401)) {
      await refreshRuns();
      if (state.libDirty || (!state.streaming && tick % LIBRARY_EVERY === 0)
          || state.library === null) {
        state.libDirty = false;
        await refreshLibrary();
      }
    }
    // With the event stream open, a change wakes this loop (kick); polling is the fallback.
    await nap(state.streaming ? STREAM_CHECK_MS : document.hidden ? HIDDEN_POLL_MS : POLL_MS);
  }
}

// -- the event stream (GET /runtime/events): changes pushed, polling only when it fails ------

function onEvent(frame) {
  if (frame.id) state.lastEventId = frame.id;
  if (frame.event === "library.changed") {
    state.libDirty = true;
  } else if (frame.event === "reset") {
    // fell behind, or the server restarted: reload the lists (ETags make it cheap)
    state.libDirty = true;
    state.etag = "";
  } else if (frame.event !== "run.updated" && frame.event !== "run.deleted") {
    return;
  }
  kick();
}

async function streamLoop() {
  for (let failures = 0; ; ) {
    if (api.tokenDeclined() && state.error?.status === 401) {
      await new Promise((resolve) => setTimeout(resolve, STREAM_RETRY_MS[0]));
      continue;
    }
    let opened = 0;
    try {
      await api.followEvents({
        lastEventId: state.lastEventId,
        onOpen: () => {
          opened = Date.now();
          state.streaming = true;
          document.documentElement.dataset.live = "stream";
          kick(); // anything that changed while it was closed
        },
        onEvent,
      });
    } catch {
      // refused or broken: polling covers until it opens again
    }
    state.streaming = false;
    document.documentElement.dataset.live = "poll";
    kick();
    // a stream that lived a while was fine: start the back-off again; one that ended at
    // once (or never opened) counts as a failure, so a broken stream is not hammered
    failures = opened && Date.now() - opened > 10_000 ? 0 : failures + 1;
    const wait = STREAM_RETRY_MS[Math.min(Math.max(failures - 1, 0), STREAM_RETRY_MS.length - 1)];
    await new Promise((resolve) => setTimeout(resolve, wait));
  }
}

// -- actions -----------------------------------------------------------------------------

function updateRun(meta) {
  if (!state.runs) return;
  state.runs = state.runs.map((r) => (r.run_id === meta.run_id ? { ...r, metadata: meta } : r));
  state.etag = ""; // our copy differs from the server's last answer now
}

function firstActionKey(row) {
  return row?.querySelector("[data-key]")?.dataset.key ?? null;
}

const handlers = {
  preview(run, entry, opener) {
    dialogs.previewDialog({ runId: run.run_id, entry, opener });
  },

  promote(run, entry, opener) {
    dialogs.promoteDialog({
      runId: run.run_id, entry, opener,
      onDone: (name, overwrote) => {
        toast(overwrote ? `Replaced library file ${name} with ${entry.filename}.`
          : `Promoted ${entry.filename} to the library as ${name}.`);
        state.libFresh.set(name, Date.now() + FRESH_MS);
        state.libDirty = true;
        state.libEtag = "";
        kick();
      },
    });
  },

  deleteFile(run, entry, opener) {
    const row = opener.closest("li");
    const candidates = [firstActionKey(row?.nextElementSibling),
      firstActionKey(row?.previousElementSibling), `run:${run.run_id}:keep`];
    dialogs.confirmAction({
      title: "Delete this file?",
      text: `“${entry.filename}” (${formatBytes(entry.size_bytes)}) will be removed from run ${run.run_id}. `
        + "It does not come back unless an agent writes it again.",
      confirmLabel: "Delete file",
      opener,
      fallback: () => candidates.map(dialogs.byKey).find(Boolean) ?? $("artifacts-heading"),
      action: async () => {
        await api.deleteArtifact(run.run_id, entry.filename);
        toast(`Deleted ${entry.filename} from run ${shortId(run.run_id)}.`);
        const meta = run.total ?? run.metadata;
        updateRun({ ...meta, artifacts: meta.artifacts.filter((a) => a.filename !== entry.filename) });
        render();
        kick();
      },
    });
  },

  deleteRun(run, opener) {
    const meta = run.total ?? run.metadata;
    const size = meta.artifacts.reduce((n, a) => n + a.size_bytes, 0);
    const article = opener.closest("article");
    const candidates = [article?.nextElementSibling, article?.previousElementSibling]
      .map((el) => el?.dataset.run ? `run:${el.dataset.run}:keep` : null);
    const files = meta.artifacts.length;
    dialogs.confirmAction({
      title: "Delete this run?",
      text: `Run ${run.run_id} and its ${files} ${files === 1 ? "file" : "files"} (${formatBytes(size)}) `
        + `will be deleted${meta.keep ? ", although it is kept" : ""}. `
        + "A deleted run stays deleted: it does not come back from its session.",
      confirmLabel: "Delete run",
      opener,
      fallback: () => candidates.map(dialogs.byKey).find(Boolean) ?? $("artifacts-heading"),
      action: async () => {
        await api.deleteRun(run.run_id);
        toast(`Deleted run ${shortId(run.run_id)}.`);
        if (state.runs) state.runs = state.runs.filter((r) => r.run_id !== run.run_id);
        state.etag = "";
        render();
        kick();
      },
    });
  },

  async keep(run, keep, opener) {
    opener.disabled = true;
    try {
      const meta = await api.setKeep(run.run_id, keep);
      toast(keep ? `Run ${shortId(run.run_id)} is kept: it never expires.`
        : `Run ${shortId(run.run_id)} is no longer kept: it expires with its retention.`);
      if (meta?.run_id) updateRun(meta);
      render();
      kick();
    } catch (err) {
      toast(err.message, "error");
    } finally {
      opener.disabled = false;
      // the button was re-rendered: keep the focus on its successor
      dialogs.byKey(`run:${run.run_id}:keep`)?.focus({ preventScroll: true });
    }
  },
};

function deleteLibraryFile(file, opener) {
  const row = opener.closest("li");
  const neighbours = [row?.nextElementSibling, row?.previousElementSibling]
    .map((el) => el?.querySelector("[data-key$=':delete']")?.dataset.key ?? null);
  dialogs.confirmAction({
    title: "Delete this library file?",
    text: `“${file.name}” (${formatBytes(file.size_bytes)}) will be deleted from the library. `
      + "The artifact it was promoted from, if any, stays in its run.",
    confirmLabel: "Delete file",
    opener,
    fallback: () => neighbours.map(dialogs.byKey).find(Boolean) ?? $("upload-open"),
    action: async () => {
      await api.deleteLibraryFile(file.name);
      toast(`Deleted ${file.name} from the library.`);
      if (state.library) state.library = state.library.filter((f) => f.name !== file.name);
      state.libDirty = true;
      state.libEtag = "";
      renderLibraryBox();
      kick();
    },
  });
}

async function clearExpired(opener) {
  try {
    await dialogs.sweepDialog({
      opener,
      onDone: (ids) => {
        toast(ids.length === 0 ? "No run was deleted: none had expired any more."
          : `Deleted ${ids.length} expired ${ids.length === 1 ? "run" : "runs"}: ${ids.join(", ")}.`);
        state.etag = "";
        kick();
      },
    });
  } catch (err) {
    toast(`The expired runs could not be listed: ${err.message}`, "error");
  }
}

// -- downloads and reports when a token is needed ------------------------------------------

// A plain link cannot carry the Authorization header: with a token, downloads
// are fetched and handed to the browser as a blob, and a report opens in a new
// tab through a short-lived signed link (POST .../link), which the server
// honours in place of the token for that one file; the tab's content stays
// under the sandbox policy of every file answer, so none of its scripts run.
document.addEventListener("click", async (event) => {
  if (event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey
      || event.shiftKey || event.altKey || !api.currentToken()) return;
  const link = event.target.closest("a[data-fetch-download], #preview-download, a[data-report]");
  if (!link) return;
  event.preventDefault();
  if (link.dataset.report) {
    try {
      const url = await api.fileLink(link.dataset.run, link.dataset.file);
      // still within the click's user activation, so not blocked as a popup (with
      // noopener, window.open answers null even when the tab opened)
      window.open(`${url}&view=1`, "_blank", "noopener,noreferrer");
    } catch (err) {
      toast(`The report could not be opened: ${err.message}`, "error");
    }
    return;
  }
  try {
    const blob = await api.fetchBlob(link.href);
    const url = URL.createObjectURL(blob);
    const temp = h("a", { href: url, download: link.getAttribute("download") || "", hidden: true });
    document.body.append(temp);
    temp.click();
    temp.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  } catch (err) {
    toast(`The download failed: ${err.message}`, "error");
  }
});

// -- wiring ---------------------------------------------------------------------------------

/** Narrow the run list to one agent or workflow (from Insights), or show all again. */
function setFacet(facet) {
  state.facet = facet;
  syncUrl();
  render();
  const target = facet ? $("artifacts-heading") : $("search");
  target.scrollIntoView({ block: "start" });
  target.focus({ preventScroll: true });
}

function start() {
  fillIcons();
  $("brand-mark").append(icon("logo"));
  api.setTokenPrompt((reason) => dialogs.askToken(reason));

  for (const button of document.querySelectorAll("[data-filter]")) {
    button.addEventListener("click", () => {
      if (state.filter === button.dataset.filter) return;
      state.filter = button.dataset.filter;
      state.runs = null;
      state.error = null;
      syncUrl();
      render();
      kick();
    });
  }
  $("sort").addEventListener("change", (event) => {
    state.sort = event.target.value;
    syncUrl();
    render();
  });
  $("search").value = state.query;
  $("search").addEventListener("input", (event) => {
    state.query = event.target.value;
    syncUrl();
    render();
  });
  $("sweep-open").addEventListener("click", (event) => clearExpired(event.currentTarget));
  $("upload-open").addEventListener("click", (event) => {
    dialogs.uploadDialog({
      opener: event.currentTarget,
      onDone: (name) => {
        toast(`Uploaded ${name} to the library.`);
        state.libFresh.set(name, Date.now() + FRESH_MS);
        state.libDirty = true;
        state.libEtag = "";
        kick();
      },
    });
  });
  document.addEventListener("visibilitychange", () => { if (!document.hidden) kick(); });
  mountInsights({ onFacet: setFacet });

  // "2 min ago" keeps counting; badges (recent, expiring) follow once a minute.
  setInterval(() => tickTimes(document), 15_000);
  setInterval(() => { if (state.runs) render(); }, 60_000);

  render();
  pollLoop();
  streamLoop();
}

start();
