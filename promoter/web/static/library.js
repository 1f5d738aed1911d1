// The "Library" list: curated files with name, size, date, a download link and a delete button.

import { libraryUrl } from "./api.js";
import { h, srOnly } from "./dom.js";
import { exactTime, formatBytes, KIND_LABEL, kindOf, shortDate, toMillis } from "./format.js";
import { icon } from "./icons.js";

/** Build the library list (or its empty state) as a node. */
export function renderLibrary(files, { fresh = new Set(), onDelete = null } = {}) {
  if (!files.length) {
    return h("div", { class: "empty empty-small" }, icon("inbox", "empty-icon"),
      h("p", { class: "empty-title", text: "The library is empty" }),
      h("p", { class: "empty-text",
               text: "Upload a file, or promote an artifact from a run to keep it here." }));
  }
  return h("ul", { class: "lib-files", "aria-label": "Library files" }, files.map((file) => {
    const kind = kindOf(file.content_type, file.name);
    const modified = toMillis(file.modified_at);
    return h("li", { class: `lib-file${fresh.has(file.name) ? " is-fresh" : ""}` },
      h("span", { class: `file-icon kind-${kind}`, title: KIND_LABEL[kind] }, icon(kind),
        srOnly(`${KIND_LABEL[kind]}: `)),
      h("span", { class: "lib-main" },
        h("span", { class: "lib-name", title: file.name }, file.name),
        h("span", { class: "lib-meta" },
          h("span", {}, formatBytes(file.size_bytes)),
          h("time", { datetime: file.modified_at, title: exactTime(modified) }, shortDate(modified)))),
      h("a", {
        class: "btn btn-icon-only", href: libraryUrl(file.name, { download: true }),
        download: file.name, title: "Download", "aria-label": `Download ${file.name}`,
        dataset: { key: `lib:${file.name}:download`, fetchDownload: "1" },
      }, icon("download")),
      onDelete && h("button", {
        type: "button", class: "btn btn-icon-only btn-quiet-danger", title: "Delete",
        "aria-label": `Delete ${file.name} from the library`,
        dataset: { key: `lib:${file.name}:delete` },
        onclick: (e) => onDelete(file, e.currentTarget),
      }, icon("trash")));
  }));
}
