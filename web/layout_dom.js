// Small DOM helpers shared by the layout editor's parts. User text only ever goes into
// textContent / value (never innerHTML).

export function el(tag, props = {}, style = {}) {
  const e = document.createElement(tag);
  Object.assign(e, props);
  Object.assign(e.style, style);
  return e;
}

export const BUTTON_STYLE = {
  background: "var(--comfy-input-bg, #222)", color: "var(--input-text, #ddd)",
  border: "1px solid var(--border-color, #444)", borderRadius: "4px", padding: "1px 6px",
  font: "inherit", cursor: "pointer", whiteSpace: "nowrap",
};

export const INPUT_STYLE = {
  background: "var(--comfy-input-bg, #222)", color: "var(--input-text, #ddd)",
  border: "1px solid var(--border-color, #444)", borderRadius: "4px", padding: "1px 4px",
  font: "inherit", minWidth: "0", boxSizing: "border-box",
};

/** Keys typed into our fields must not reach the graph's shortcuts (Delete removing the node, ...). */
export function keepKeysLocal(input) {
  input.addEventListener("keydown", (e) => {
    if (!e.ctrlKey && !e.metaKey && !e.altKey) e.stopPropagation();
  });
}

/** Attribute of a Nodes 2.0 node shell drawn in front of the nodes it overlaps (see LayoutEditor.showSelected);
 * an attribute, not a class: Vue rewrites the shell's classes whenever the selection changes. */
export const SELECTED_IN_FRONT = "data-msp-in-front";
export const LAYOUT_CSS = `.lg-node[${SELECTED_IN_FRONT}] { z-index: 99999 !important; }`;

/** Add a <style> element once (by id) to the page. */
export function addStyle(id, css) {
  if (document.getElementById(id)) return;
  document.head.append(el("style", { id, textContent: css }));
}
