// Building DOM nodes without HTML strings (STYLE rule 18, DESIGN §8).
//
// Every string a caller passes ends up as a Text node or an attribute value,
// never as markup: agent-controlled text (run ids, file names, directives,
// agent ids) cannot become HTML through this module.

/**
 * Create an element.
 * props: class, text, dataset, on<event> handlers, hidden, and plain attributes
 * (a value of true sets an empty attribute; null, undefined and false set nothing).
 * children: nodes or strings (strings become Text nodes), arrays are flattened.
 */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key === "hidden") el.hidden = true;
    else if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

/** Append nodes and strings (as text) to a parent, skipping null and false. */
export function append(parent, children) {
  for (const child of [children].flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    parent.append(child instanceof Node ? child : String(child));
  }
  return parent;
}

/** Replace every child of a parent. */
export function replaceChildren(parent, ...children) {
  parent.replaceChildren();
  return append(parent, children);
}

/** Text for screen readers only. */
export function srOnly(text) {
  return h("span", { class: "visually-hidden", text });
}
