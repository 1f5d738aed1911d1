// The page's only way to the server: the documented routes of DESIGN §7 and
// nothing else, so anything the page does a script can do too (STYLE rule 18).

const TOKEN_KEY = "promoter.token";

/** A refused request; `message` is the server's one-sentence detail. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.name = "ApiError";
    this.status = status;
  }
}

// -- the access token (DESIGN §7 "Access") -------------------------------------------

let promptForToken = async () => null;
let pendingPrompt = null;
let declined = false;

/** The page supplies the dialog that asks for a token: (reason) => Promise<string|null>. */
export function setTokenPrompt(fn) {
  promptForToken = fn;
}

export function currentToken() {
  return sessionStorage.getItem(TOKEN_KEY);
}

/** True after the person closed the token dialog: requests then fail until asked again. */
export function tokenDeclined() {
  return declined;
}

/** Ask for the token again (the "Enter token" button of the error state). */
export function resetTokenPrompt() {
  declined = false;
}

async function askForToken(reason) {
  if (declined) return null;
  // Several requests may meet a 401 at once: they share one dialog.
  pendingPrompt ??= (async () => {
    try {
      const token = await promptForToken(reason);
      if (token) sessionStorage.setItem(TOKEN_KEY, token);
      else declined = true;
      return token;
    } finally {
      pendingPrompt = null;
    }
  })();
  return pendingPrompt;
}

// -- requests ------------------------------------------------------------------------

const CHANGING = new Set(["POST", "PUT", "PATCH", "DELETE"]);

/** fetch with the token, the CSRF header on changes, and a token prompt on 401. */
export async function request(url, { method = "GET", headers = {}, body, signal } = {}) {
  for (;;) {
    const sent = currentToken();
    const h = new Headers(headers);
    if (sent) h.set("Authorization", `Bearer ${sent}`);
    if (CHANGING.has(method)) h.set("X-Promoter-Request", "1");
    let res;
    try {
      // no-store: the browser adds no conditional headers of its own, so a 304
      // reaches this code exactly when our If-None-Match matched.
      res = await fetch(url, { method, headers: h, body, signal, cache: "no-store",
                               credentials: "same-origin" });
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new ApiError(0, "Cannot reach promoter: the server may be down or restarting.");
    }
    if (res.status !== 401) return res;
    if (currentToken() !== sent) continue; // another request was given a new token meanwhile
    const token = await askForToken(sent ? "refused" : "needed");
    if (!token) throw new ApiError(401, "This promoter needs an access token.");
  }
}

/** The error sentence of a failed answer ({"detail": "..."}), else its status. */
export async function errorOf(res) {
  let detail = "";
  try {
    const data = await res.json();
    if (typeof data?.detail === "string") detail = data.detail;
    else if (Array.isArray(data?.detail)) detail = data.detail.map((d) => d.msg).join("; ");
  } catch {
    // not JSON: fall back on the status line
  }
  return new ApiError(res.status, detail || `The server answered ${res.status} ${res.statusText}.`);
}

async function json(url, options) {
  const res = await request(url, options);
  if (!res.ok) throw await errorOf(res);
  return res.status === 204 ? null : res.json();
}

const seg = encodeURIComponent;
/** A file name may hold "/": each segment is encoded, the slashes are kept. */
const path = (filename) => filename.split("/").map(seg).join("/");

// -- URLs of files -------------------------------------------------------------------

export function artifactUrl(runId, filename, { download = false, view = false } = {}) {
  const base = `/runtime/artifacts/${seg(runId)}/files/${path(filename)}`;
  if (download) return `${base}?download=1`;
  if (view) return `${base}?view=1`;
  return base;
}

/** The run's files as one zip (streamed by the server). */
export function archiveUrl(runId) {
  return `/runtime/artifacts/${seg(runId)}/archive`;
}

export function libraryUrl(name, { download = false } = {}) {
  const base = `/runtime/library/${seg(name)}`;
  return download ? `${base}?download=1` : base;
}

// -- routes --------------------------------------------------------------------------

/**
 * The runs for a filter; resolves {notModified: true} when `etag` still matches,
 * else {etag, runs}.
 */
export async function listArtifacts({ filter = "all", runId = "", etag = "", signal } = {}) {
  const query = new URLSearchParams({ filter });
  if (runId) query.set("run_id", runId);
  const headers = etag ? { "If-None-Match": etag } : {};
  const res = await request(`/runtime/artifacts?${query}`, { headers, signal });
  if (res.status === 304) return { notModified: true };
  if (!res.ok) throw await errorOf(res);
  const data = await res.json();
  return { etag: res.headers.get("ETag") || "", runs: data.artifacts ?? [] };
}

/** The library's files; {notModified: true} when `etag` still matches. */
export async function listLibrary({ etag = "" } = {}) {
  const headers = etag ? { "If-None-Match": etag } : {};
  const res = await request("/runtime/library", { headers });
  if (res.status === 304) return { notModified: true };
  if (!res.ok) throw await errorOf(res);
  const data = await res.json();
  return { etag: res.headers.get("ETag") || "", files: data.files ?? [] };
}

export function deleteRun(runId) {
  return json(`/runtime/artifacts/${seg(runId)}`, { method: "DELETE" });
}

export function deleteArtifact(runId, filename) {
  return json(artifactUrl(runId, filename), { method: "DELETE" });
}

export function deleteLibraryFile(name) {
  return json(libraryUrl(name), { method: "DELETE" });
}

export function setKeep(runId, keep) {
  return json(`/runtime/artifacts/${seg(runId)}`, {
    method: "PATCH",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ keep }),
  });
}

export function promote(runId, filename, name, overwrite = false) {
  const query = new URLSearchParams({ as: name });
  if (overwrite) query.set("overwrite", "true");
  return json(`${artifactUrl(runId, filename)}/promote?${query}`, { method: "POST" });
}

/**
 * The store's changes as server-sent events (DESIGN §7 /runtime/events), read
 * with fetch rather than EventSource, which cannot send the bearer token.
 * Calls onEvent({id, event, data}) for each event; resolves when the stream
 * ends (the server stopping); throws when it cannot be opened or breaks.
 */
export async function followEvents({ lastEventId = "", onOpen, onEvent, signal } = {}) {
  const headers = lastEventId ? { "Last-Event-ID": lastEventId } : {};
  const res = await request("/runtime/events", { headers, signal });
  if (!res.ok || !res.body) throw await errorOf(res);
  onOpen?.();
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const frame = { id: "", event: "message", data: "" };
      let isEvent = false;
      for (const line of block.split("\n")) {
        if (!line || line.startsWith(":")) continue; // comments: the keep-alive
        const colon = line.indexOf(":");
        const key = colon < 0 ? line : line.slice(0, colon);
        const val = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (key === "id") frame.id = val;
        else if (key === "event") { frame.event = val; isEvent = true; }
        else if (key === "data") frame.data += (frame.data ? "\n" : "") + val;
      }
      if (isEvent) onEvent(frame);
    }
  }
}

/**
 * A short-lived signed link to a file (DESIGN §7): opens without the token, for
 * "Open report" in a new tab. Resolves the link's URL (relative to this server).
 */
export async function fileLink(runId, filename, ttlS = 300) {
  const data = await json(`${artifactUrl(runId, filename)}/link?ttl_s=${ttlS}`, { method: "POST" });
  return data.url;
}

export function sweep({ dryRun }) {
  return json(`/runtime/sweep${dryRun ? "?dry_run=true" : ""}`, { method: "POST" });
}

/**
 * Upload into the library, reporting progress as onProgress(sentBytes, totalBytes):
 * fetch cannot tell how much of a body is sent, XMLHttpRequest can.
 */
export async function upload(file, name, overwrite = false, onProgress = null) {
  const query = new URLSearchParams();
  if (name) query.set("name", name);
  if (overwrite) query.set("overwrite", "true");
  const qs = query.size ? `?${query}` : "";
  for (;;) {
    const sent = currentToken();
    const body = new FormData();
    body.append("file", file, file.name);
    const xhr = await new Promise((resolve, reject) => {
      const req = new XMLHttpRequest();
      req.open("POST", `/runtime/library${qs}`);
      if (sent) req.setRequestHeader("Authorization", `Bearer ${sent}`);
      req.setRequestHeader("X-Promoter-Request", "1");
      if (onProgress) {
        req.upload.addEventListener("progress", (e) => {
          if (e.lengthComputable) onProgress(e.loaded, e.total);
        });
      }
      req.addEventListener("load", () => resolve(req));
      req.addEventListener("error", () => reject(
        new ApiError(0, "Cannot reach promoter: the server may be down or restarting.")));
      req.send(body);
    });
    if (xhr.status === 401) {
      if (currentToken() !== sent) continue;
      const token = await askForToken(sent ? "refused" : "needed");
      if (!token) throw new ApiError(401, "This promoter needs an access token.");
      continue;
    }
    let data = null;
    try {
      data = JSON.parse(xhr.responseText);
    } catch {
      // not JSON: the status line speaks
    }
    if (xhr.status >= 200 && xhr.status < 300) return data;
    const detail = typeof data?.detail === "string" ? data.detail : "";
    throw new ApiError(xhr.status, detail || `The server answered ${xhr.status} ${xhr.statusText}.`);
  }
}

/**
 * The first `limit` bytes of a file as a Uint8Array (a Range request; a server
 * that ignores it is read only that far), with the file's full size if known.
 */
export async function fetchHead(url, limit) {
  const res = await request(url, { headers: { Range: `bytes=0-${limit - 1}` } });
  if (!res.ok) throw await errorOf(res);
  const total = totalSize(res);
  const reader = res.body.getReader();
  const chunks = [];
  let received = 0;
  while (received < limit) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    received += value.length;
  }
  if (received >= limit) await reader.cancel().catch(() => {});
  const bytes = new Uint8Array(Math.min(received, limit));
  let offset = 0;
  for (const chunk of chunks) {
    const part = chunk.subarray(0, bytes.length - offset);
    bytes.set(part, offset);
    offset += part.length;
    if (offset >= bytes.length) break;
  }
  return { bytes, total };
}

function totalSize(res) {
  const range = res.headers.get("Content-Range");
  const match = range && /\/(\d+)$/.exec(range);
  if (match) return Number(match[1]);
  const length = res.headers.get("Content-Length");
  return length === null ? NaN : Number(length);
}

/** A whole file as a Blob (image previews; downloads when a token must be sent). */
export async function fetchBlob(url) {
  const res = await request(url);
  if (!res.ok) throw await errorOf(res);
  return res.blob();
}
