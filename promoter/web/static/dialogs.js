// The page's dialogs: native <dialog> elements from index.html, filled with
// textContent. Escape closes them (the browser's own "cancel"); focus goes back
// to the control that opened them, or to a sensible place if it is gone.

import * as api from "./api.js";
import { h, replaceChildren } from "./dom.js";
import { baseName, formatBytes, KIND_LABEL, kindOf, previewMode } from "./format.js";

const $ = (id) => document.getElementById(id);
const PREVIEW_BYTES = 256 * 1024;
const MAX_IMAGE_BYTES = 50 * 1024 * 1024;

/** Find an element by its data-key, e.g. a button re-rendered while a dialog was open. */
export function byKey(key) {
  return key ? document.querySelector(`[data-key="${CSS.escape(key)}"]`) : null;
}

function returnFocus(opener, fallback) {
  const key = opener?.dataset?.key;
  let target = opener?.isConnected ? opener : byKey(key);
  if (!target) target = typeof fallback === "function" ? fallback() : fallback;
  target?.focus();
}

/** Show a dialog modally; `onClose` runs once when it closes (Escape, Cancel or done). */
function open(dialog, { opener = document.activeElement, fallback = null, onClose } = {}) {
  const closed = () => {
    dialog.removeEventListener("close", closed);
    onClose?.();
    returnFocus(opener, fallback);
  };
  dialog.addEventListener("close", closed);
  dialog.showModal();
}

// Every [data-close] button closes its dialog.
for (const button of document.querySelectorAll("dialog [data-close]")) {
  button.addEventListener("click", () => button.closest("dialog").close("cancel"));
}
// Clicking the backdrop (outside the dialog box) closes it too.
for (const dialog of document.querySelectorAll("dialog")) {
  dialog.addEventListener("click", (event) => {
    if (event.target !== dialog) return;
    const r = dialog.getBoundingClientRect();
    const inside = event.clientX >= r.left && event.clientX <= r.right
      && event.clientY >= r.top && event.clientY <= r.bottom;
    if (!inside) dialog.close("cancel");
  });
}

function showError(el, message) {
  el.textContent = message || "";
  el.hidden = !message;
}

/** Run `work` with the dialog's buttons disabled; returns its result. */
async function busy(dialog, work) {
  const buttons = [...dialog.querySelectorAll("button:not([data-close])")];
  dialog.setAttribute("aria-busy", "true");
  for (const b of buttons) b.disabled = true;
  try {
    return await work();
  } finally {
    dialog.removeAttribute("aria-busy");
    for (const b of buttons) b.disabled = false;
  }
}

// -- token -----------------------------------------------------------------------------

/** Ask for the access token: resolves the token, or null when cancelled. */
export function askToken(reason) {
  const dialog = $("token-dialog");
  const input = $("token-input");
  input.value = "";
  showError($("token-error"), reason === "refused"
    ? "That token was refused. Check it and try again." : "");
  return new Promise((resolve) => {
    let token = null;
    const form = $("token-form");
    const submit = (event) => {
      event.preventDefault();
      token = input.value.trim();
      if (token) dialog.close("ok");
    };
    form.addEventListener("submit", submit);
    open(dialog, {
      fallback: () => $("artifacts-heading"),
      onClose: () => {
        form.removeEventListener("submit", submit);
        resolve(token || null);
      },
    });
    input.focus();
  });
}

// -- confirmation --------------------------------------------------------------------

/**
 * A confirmation: title, text, an optional list, and an action run when confirmed.
 * The dialog stays open and shows the error if the action fails.
 */
export function confirmAction({ title, text, items = [], confirmLabel, action, opener, fallback }) {
  const dialog = $("confirm-dialog");
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  const list = $("confirm-list");
  replaceChildren(list, items.map((item) => h("li", { text: item })));
  list.hidden = items.length === 0;
  const ok = $("confirm-ok");
  ok.textContent = confirmLabel;
  ok.hidden = !action;
  $("confirm-cancel").textContent = action ? "Cancel" : "Close";
  showError($("confirm-error"), "");
  const form = $("confirm-form");
  const submit = async (event) => {
    event.preventDefault();
    if (!action) return;
    try {
      await busy(dialog, action);
      dialog.close("ok");
    } catch (err) {
      showError($("confirm-error"), err.message);
    }
  };
  form.addEventListener("submit", submit);
  open(dialog, { opener, fallback, onClose: () => form.removeEventListener("submit", submit) });
  // The safe choice has the focus: Enter alone never deletes.
  $("confirm-cancel").focus();
}

// -- promote ---------------------------------------------------------------------------

/** Promote an artifact: asks the name; a 409 shows the conflict and offers to overwrite. */
export function promoteDialog({ runId, entry, opener, onDone }) {
  const dialog = $("promote-dialog");
  const input = $("promote-name");
  const conflict = $("promote-conflict");
  const error = $("promote-error");
  $("promote-text").textContent =
    `Copy “${entry.filename}” from run ${runId} into the library. The run keeps its copy.`;
  input.value = baseName(entry.filename);
  conflict.hidden = true;
  showError(error, "");

  const attempt = async (overwrite) => {
    const name = input.value.trim();
    showError(error, "");
    try {
      const added = await busy(dialog, () => api.promote(runId, entry.filename, name, overwrite));
      dialog.close("ok");
      onDone?.(added?.name ?? name, overwrite);
    } catch (err) {
      if (err.status === 409) {
        $("promote-conflict-text").textContent =
          `The library already has a file named “${name}”. Overwrite it with this artifact, or choose another name.`;
        conflict.hidden = false;
        $("promote-overwrite").focus();
      } else {
        conflict.hidden = true;
        showError(error, err.message);
        input.focus();
      }
    }
  };
  const submit = (event) => {
    event.preventDefault();
    attempt(false);
  };
  const overwrite = () => attempt(true);
  const edited = () => { conflict.hidden = true; };
  const form = $("promote-form");
  form.addEventListener("submit", submit);
  $("promote-overwrite").addEventListener("click", overwrite);
  input.addEventListener("input", edited);
  open(dialog, {
    opener,
    onClose: () => {
      form.removeEventListener("submit", submit);
      $("promote-overwrite").removeEventListener("click", overwrite);
      input.removeEventListener("input", edited);
    },
  });
  input.focus();
  input.select();
}

// -- upload ------------------------------------------------------------------------------

/** Upload a file into the library, with a name and overwrite on conflict. */
export function uploadDialog({ opener, onDone }) {
  const dialog = $("upload-dialog");
  const file = $("upload-file");
  const name = $("upload-name");
  const check = $("upload-overwrite");
  const conflict = $("upload-conflict");
  const error = $("upload-error");
  $("upload-form").reset();
  conflict.hidden = true;
  showError(error, "");

  const attempt = async (overwrite) => {
    const chosen = file.files?.[0];
    if (!chosen) {
      showError(error, "Choose a file to upload.");
      file.focus();
      return;
    }
    const wanted = name.value.trim() || chosen.name;
    showError(error, "");
    try {
      const bar = $("upload-progress");
      const said = $("upload-progress-text");
      const progress = (sentBytes, total) => {
        bar.hidden = false;
        bar.max = total;
        bar.value = sentBytes;
        said.textContent = `${formatBytes(sentBytes)} of ${formatBytes(total)} sent`;
      };
      let added;
      try {
        added = await busy(dialog, () => api.upload(chosen, name.value.trim(), overwrite, progress));
      } finally {
        bar.hidden = true;
        said.textContent = "";
      }
      dialog.close("ok");
      onDone?.(added?.name ?? wanted);
    } catch (err) {
      if (err.status === 409) {
        $("upload-conflict-text").textContent =
          `The library already has a file named “${wanted}”. Overwrite it, or choose another name.`;
        conflict.hidden = false;
        $("upload-overwrite-now").focus();
      } else {
        conflict.hidden = true;
        showError(error, err.message);
      }
    }
  };
  const submit = (event) => {
    event.preventDefault();
    attempt(check.checked);
  };
  const overwrite = () => attempt(true);
  const edited = () => { conflict.hidden = true; };
  const form = $("upload-form");
  form.addEventListener("submit", submit);
  $("upload-overwrite-now").addEventListener("click", overwrite);
  name.addEventListener("input", edited);
  file.addEventListener("change", edited);
  open(dialog, {
    opener,
    onClose: () => {
      form.removeEventListener("submit", submit);
      $("upload-overwrite-now").removeEventListener("click", overwrite);
      name.removeEventListener("input", edited);
      file.removeEventListener("change", edited);
    },
  });
  file.focus();
}

// -- preview -----------------------------------------------------------------------------

function prettyJson(text) {
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return text;
  }
}

/**
 * Preview an artifact: raster images in an <img> (from a blob: URL, so a token
 * can be sent); text, CSV, JSON and Markdown as text, the first 256 KiB; anything
 * else offers the download. HTML and SVG never come here (they open in a new tab).
 */
export function previewDialog({ runId, entry, opener }) {
  const dialog = $("preview-dialog");
  const body = $("preview-body");
  const note = $("preview-note");
  const mode = previewMode(entry.content_type, entry.filename);
  const kind = kindOf(entry.content_type, entry.filename);
  let objectUrl = null;

  $("preview-title").textContent = entry.filename;
  $("preview-meta").textContent =
    `${KIND_LABEL[kind]} · ${formatBytes(entry.size_bytes)} · ${entry.agent_id} · run ${runId}`;
  const download = $("preview-download");
  download.href = api.artifactUrl(runId, entry.filename, { download: true });
  download.setAttribute("download", baseName(entry.filename));
  download.setAttribute("aria-label", `Download ${entry.filename}`);
  note.textContent = "";
  body.dataset.mode = mode;
  replaceChildren(body, h("p", { class: "state-note", text: "Loading the preview…" }));

  open(dialog, {
    opener,
    onClose: () => {
      replaceChildren(body);
      if (objectUrl) URL.revokeObjectURL(objectUrl);
    },
  });
  $("preview-close").focus();

  const fill = async () => {
    if (mode === "image") {
      if (entry.size_bytes > MAX_IMAGE_BYTES) {
        replaceChildren(body, h("p", { class: "state-note",
          text: `This image is ${formatBytes(entry.size_bytes)}: too large to preview here. Download it to view it.` }));
        return;
      }
      const blob = await api.fetchBlob(api.artifactUrl(runId, entry.filename));
      if (!dialog.open) return;
      objectUrl = URL.createObjectURL(blob);
      const img = h("img", { class: "preview-image", alt: `Preview of ${entry.filename}`, src: objectUrl });
      replaceChildren(body, h("div", { class: "preview-image-frame" }, img));
      return;
    }
    if (mode === "text") {
      const { bytes, total } = await api.fetchHead(api.artifactUrl(runId, entry.filename), PREVIEW_BYTES);
      if (!dialog.open) return;
      const size = Number.isFinite(total) ? total : entry.size_bytes;
      const cut = bytes.length < size;
      let text = new TextDecoder("utf-8").decode(bytes, { stream: cut });
      if (!cut && kind === "json") text = prettyJson(text);
      const pre = h("pre", { class: "preview-text", tabindex: "0",
                             "aria-label": `Contents of ${entry.filename}` });
      pre.textContent = text || "(empty file)";
      replaceChildren(body, pre);
      note.textContent = cut
        ? `Showing the first ${formatBytes(bytes.length)} of ${formatBytes(size)}.` : "";
      return;
    }
    replaceChildren(body, h("p", { class: "state-note",
      text: `No preview for ${kind === "other" ? "this type of file"
        : `${KIND_LABEL[kind].toLowerCase()} files`}. Download the file to open it.` }));
  };
  fill().catch((err) => {
    if (dialog.open) {
      replaceChildren(body, h("p", { class: "state-note state-error", role: "alert",
                                     text: `The preview could not be loaded: ${err.message}` }));
    }
  });
}

// -- clear expired runs -----------------------------------------------------------------

/** The sweep: a dry run first, the run ids it would delete shown, then the real one. */
export async function sweepDialog({ opener, onDone }) {
  const dialog = $("confirm-dialog");
  let listed;
  opener.disabled = true;
  try {
    listed = await api.sweep({ dryRun: true });
  } finally {
    opener.disabled = false;
  }
  const ids = listed?.expired ?? [];
  if (ids.length === 0) {
    confirmAction({
      title: "Clear expired runs",
      text: "No run has expired: there is nothing to delete.",
      confirmLabel: "",
      action: null,
      opener,
    });
    return;
  }
  confirmAction({
    title: "Clear expired runs",
    text: ids.length === 1
      ? "This run has expired and will be deleted with its files. Kept runs are never deleted."
      : `These ${ids.length} runs have expired and will be deleted with their files. Kept runs are never deleted.`,
    items: ids,
    confirmLabel: ids.length === 1 ? "Delete 1 run" : `Delete ${ids.length} runs`,
    opener,
    action: async () => {
      const done = await api.sweep({ dryRun: false });
      onDone?.(done?.expired ?? []);
    },
  });
  return dialog;
}
