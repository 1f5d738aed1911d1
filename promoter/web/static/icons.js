// One small set of line icons, drawn on a 24-unit grid with the same stroke,
// built with DOM APIs so that no markup string is ever parsed (DESIGN §8).

const SVG = "http://www.w3.org/2000/svg";

const FILE = ["path", { d: "M14 3H7a2 2 0 0 0-2 2v14a2 2 0 0 0 2 2h10a2 2 0 0 0 2-2V8z" }];
const FOLD = ["path", { d: "M14 3v5h5" }];

const SHAPES = {
  logo: [
    ["path", { d: "m12 3 9 4.5-9 4.5-9-4.5z" }],
    ["path", { d: "m3 12 9 4.5 9-4.5" }],
    ["path", { d: "m3 16.5 9 4.5 9-4.5" }],
  ],
  image: [
    ["rect", { x: 3, y: 3, width: 18, height: 18, rx: 2.5 }],
    ["circle", { cx: 9, cy: 9, r: 1.75 }],
    ["path", { d: "m21 15.5-4.5-4.5L6 21" }],
  ],
  table: [
    ["rect", { x: 3, y: 4, width: 18, height: 16, rx: 2 }],
    ["path", { d: "M3 9.5h18M3 15h18M9.5 4v16" }],
  ],
  json: [
    ["path", { d: "M8.5 4H8a2 2 0 0 0-2 2v3.5a2.5 2.5 0 0 1-2.5 2.5A2.5 2.5 0 0 1 6 14.5V18a2 2 0 0 0 2 2h.5" }],
    ["path", { d: "M15.5 4h.5a2 2 0 0 1 2 2v3.5a2.5 2.5 0 0 0 2.5 2.5 2.5 2.5 0 0 0-2.5 2.5V18a2 2 0 0 1-2 2h-.5" }],
  ],
  text: [FILE, FOLD, ["path", { d: "M8.5 12.5h7M8.5 16.5h5" }]],
  html: [
    ["rect", { x: 3, y: 4, width: 18, height: 16, rx: 2 }],
    ["path", { d: "M3 8.5h18" }],
    ["path", { d: "m10 12.5-2 2 2 2M14 12.5l2 2-2 2" }],
  ],
  pdf: [FILE, FOLD, ["path", { d: "M9 18v-5.5h2a1.75 1.75 0 0 1 0 3.5H9" }]],
  archive: [
    ["rect", { x: 3, y: 3.5, width: 18, height: 5, rx: 1.25 }],
    ["path", { d: "M5 8.5V19a2 2 0 0 0 2 2h10a2 2 0 0 0 2-2V8.5" }],
    ["path", { d: "M10 12.5h4" }],
  ],
  other: [FILE, FOLD],
  eye: [
    ["path", { d: "M2.5 12S6 5.5 12 5.5 21.5 12 21.5 12 18 18.5 12 18.5 2.5 12 2.5 12z" }],
    ["circle", { cx: 12, cy: 12, r: 2.75 }],
  ],
  download: [["path", { d: "M12 3.5v11.5M7 10l5 5 5-5M5 20.5h14" }]],
  upload: [["path", { d: "M12 15.5V4M7 9l5-5 5 5M5 20.5h14" }]],
  promote: [
    ["path", { d: "M5 19.5V5a2 2 0 0 1 2-2h12v14H7a2 2 0 0 0-2 2.5A2 2 0 0 0 7 21h12v-4" }],
    ["path", { d: "M12 6.5v7M8.5 10h7" }],
  ],
  trash: [["path", { d: "M4 7h16M10 11v6M14 11v6M6 7l.9 12.1A2 2 0 0 0 8.9 21h6.2a2 2 0 0 0 2-1.9L18 7M9 7V4.5A1.5 1.5 0 0 1 10.5 3h3A1.5 1.5 0 0 1 15 4.5V7" }]],
  pin: [["path", { d: "M12 16.5V21M8.5 3h7l-1 6.5 3.5 3.5v2.5H6V13l3.5-3.5z" }]],
  external: [["path", { d: "M14 4h6v6M20 4l-9 9M18 14v4.5a1.5 1.5 0 0 1-1.5 1.5h-11A1.5 1.5 0 0 1 4 18.5v-11A1.5 1.5 0 0 1 5.5 6H10" }]],
  search: [["circle", { cx: 11, cy: 11, r: 6.5 }], ["path", { d: "m20 20-4.2-4.2" }]],
  close: [["path", { d: "M6 6l12 12M18 6 6 18" }]],
  alert: [["circle", { cx: 12, cy: 12, r: 9 }], ["path", { d: "M12 7.5v5.5M12 16.5v.01" }]],
  sweep: [["circle", { cx: 12, cy: 13, r: 8 }], ["path", { d: "M12 9v4l2.5 2.5M9.5 2.5h5" }]],
  agent: [
    ["rect", { x: 4.5, y: 8, width: 15, height: 12, rx: 3 }],
    ["path", { d: "M12 8V4.5M9.5 13.5v1M14.5 13.5v1" }],
  ],
  workflow: [
    ["circle", { cx: 6, cy: 6, r: 2.25 }],
    ["circle", { cx: 6, cy: 18, r: 2.25 }],
    ["circle", { cx: 18, cy: 12, r: 2.25 }],
    ["path", { d: "M6 8.25v7.5M8.25 6H12a3.75 3.75 0 0 1 3.75 3.75v0" }],
  ],
  inbox: [
    ["path", { d: "M3 13.5h5l1.5 2.5h5l1.5-2.5h5" }],
    ["path", { d: "M5.5 5.5h13L21 13.5V18a2 2 0 0 1-2 2H5a2 2 0 0 1-2-2v-4.5z" }],
  ],
};

/** An inline SVG icon, hidden from screen readers (the control carries the label). */
export function icon(name, className = "") {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("aria-hidden", "true");
  svg.setAttribute("focusable", "false");
  svg.setAttribute("class", className ? `icon ${className}` : "icon");
  for (const [tag, attrs] of SHAPES[name] ?? SHAPES.other) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
    svg.append(node);
  }
  return svg;
}
