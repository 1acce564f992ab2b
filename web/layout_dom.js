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
