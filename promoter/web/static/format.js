// Formatting of sizes, times and file kinds: pure functions, no DOM.

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];

/** 45120 -> "44.1 KiB". */
export function formatBytes(bytes) {
  let value = Number(bytes) || 0;
  let unit = 0;
  while (value >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit += 1;
  }
  if (unit === 0) return `${value} B`;
  return `${value >= 100 ? Math.round(value) : value.toFixed(1)} ${UNITS[unit]}`;
}

/** Parse an RFC 3339 time into milliseconds since the epoch (NaN when malformed). */
export function toMillis(text) {
  return Date.parse(text);
}

/** "just now", "2 min ago", "3 h ago", "yesterday", "5 days ago". */
export function timeAgo(ms, now = Date.now()) {
  if (!Number.isFinite(ms)) return "unknown time";
  const seconds = Math.max(0, Math.round((now - ms) / 1000));
  if (seconds < 45) return "just now";
  const minutes = Math.round(seconds / 60);
  if (minutes < 60) return `${minutes} min ago`;
  const hours = Math.floor(minutes / 60);
  if (hours < 24) return `${hours} h ago`;
  const days = Math.floor(hours / 24);
  if (days === 1) return "yesterday";
  return `${days} days ago`;
}

/** "in 40 min", "in 5 h", "in 3 days"; "now" once past. */
export function timeLeft(ms, now = Date.now()) {
  if (!Number.isFinite(ms)) return "at an unknown time";
  const seconds = Math.round((ms - now) / 1000);
  if (seconds <= 0) return "now";
  const minutes = Math.ceil(seconds / 60);
  if (minutes < 60) return `in ${minutes} min`;
  const hours = Math.floor(minutes / 60);
  if (hours < 48) return `in ${hours} h`;
  return `in ${Math.floor(hours / 24)} days`;
}

const EXACT = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
const DAY = new Intl.DateTimeFormat(undefined, { day: "numeric", month: "short", year: "numeric" });

/** A full local date and time, for titles. */
export function exactTime(ms) {
  return Number.isFinite(ms) ? EXACT.format(ms) : "unknown time";
}

/** A short local date, for the library list. */
export function shortDate(ms) {
  return Number.isFinite(ms) ? DAY.format(ms) : "unknown date";
}

/**
 * Run ids can be long: hex ids and UUIDs show their first 8 characters (as git
 * does); other ids, which are often words, are cut only past 24 characters.
 */
export function shortId(runId) {
  if (/^[0-9a-f-]{13,}$/i.test(runId)) return `${runId.slice(0, 8)}…`;
  return runId.length > 24 ? `${runId.slice(0, 22)}…` : runId;
}

/** The last path component of an artifact's filename. */
export function baseName(filename) {
  const parts = filename.split("/");
  return parts[parts.length - 1];
}

const ARCHIVES = new Set([
  "application/zip", "application/gzip", "application/x-gzip", "application/x-tar",
  "application/x-7z-compressed", "application/x-bzip2", "application/x-xz",
  "application/x-rar-compressed", "application/vnd.rar", "application/zstd",
  "application/x-zstd", "application/java-archive",
]);
const TABLES = new Set([
  "text/csv", "text/tab-separated-values", "application/vnd.ms-excel",
  "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
  "application/vnd.oasis.opendocument.spreadsheet", "application/x-parquet",
  "application/vnd.apache.parquet",
]);
const TEXTS = new Set([
  "application/xml", "application/x-yaml", "application/yaml", "application/toml",
  "application/x-sh", "application/javascript", "application/x-python-code",
  "application/sql", "application/x-ndjson",
]);
const RASTER = new Set([
  "image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp", "image/avif",
  "image/x-icon", "image/vnd.microsoft.icon",
]);

/**
 * What a file is, for its icon, its sort order and how it is shown:
 * image, table, json, text, html, pdf, archive or other.
 */
export function kindOf(contentType, filename = "") {
  const type = String(contentType || "").split(";")[0].trim().toLowerCase();
  const lower = filename.toLowerCase();
  if (type === "text/html" || type === "application/xhtml+xml" || type === "image/svg+xml") {
    return "html";
  }
  if (type.startsWith("image/")) return "image";
  if (TABLES.has(type) || lower.endsWith(".csv") || lower.endsWith(".tsv")) return "table";
  if (type === "application/json" || type.endsWith("+json") || lower.endsWith(".jsonl")
      || lower.endsWith(".ndjson")) return "json";
  if (type === "application/pdf") return "pdf";
  if (ARCHIVES.has(type)) return "archive";
  if (type.startsWith("text/") || TEXTS.has(type) || lower.endsWith(".md")
      || lower.endsWith(".log") || lower.endsWith(".txt")) return "text";
  return "other";
}

export const KIND_ORDER = ["image", "table", "json", "text", "html", "pdf", "archive", "other"];

export const KIND_LABEL = {
  image: "Image", table: "Table", json: "JSON", text: "Text", html: "Report",
  pdf: "PDF", archive: "Archive", other: "File",
};

/** How a preview shows a file: "image", "text" (first 256 KiB), "report" (new tab) or "none". */
export function previewMode(contentType, filename = "") {
  const type = String(contentType || "").split(";")[0].trim().toLowerCase();
  const kind = kindOf(contentType, filename);
  if (kind === "html") return "report";
  if (kind === "image") return RASTER.has(type) ? "image" : "none";
  if (kind === "text" || kind === "json") return "text";
  if (kind === "table") {
    return type.startsWith("text/") || filename.toLowerCase().endsWith(".csv") ? "text" : "none";
  }
  return "none";
}
