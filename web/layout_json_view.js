// The boxes as editable JSON text, inside the editor itself: the same element in both node
// renderers (the frontend's own `boxes` text widget stays hidden; Nodes 2.0 cannot re-show it).

import { el, INPUT_STYLE, keepKeysLocal } from "./layout_dom.js";

export const JSON_VIEW_HEIGHT = 112;

export class JsonView {
  /** onEdit(text) is called with the whole text after every keystroke / paste; onDone once the text was changed and left. */
  constructor(onEdit, onDone) {
    this.element = el("textarea", {
      className: "msp-layout-json-text", spellcheck: false,
      title: "the boxes as JSON: [{\"x1\", \"y1\", \"x2\", \"y2\" (fractions 0..1), \"label\"}, ...]",
    }, {
      ...INPUT_STYLE, display: "none", flex: `0 0 ${JSON_VIEW_HEIGHT}px`, width: "100%", resize: "none",
      fontFamily: "monospace", fontSize: "11px", whiteSpace: "pre-wrap",
    });
    keepKeysLocal(this.element);
    this.element.addEventListener("input", () => onEdit(this.element.value));
    this.element.addEventListener("change", () => onDone());
    // the graph must not pan / select while the text is dragged over or scrolled
    for (const type of ["pointerdown", "wheel"]) this.element.addEventListener(type, (e) => e.stopPropagation());
  }

  get visible() {
    return this.element.style.display !== "none";
  }

  set visible(shown) {
    this.element.style.display = shown ? "block" : "none";
  }

  /** Show `text` unless it is what the user is typing (the caret stays where it is). */
  show(text) {
    if (this.element.value !== text) this.element.value = text;
  }
}
