// The box editor of "Draw Layout Box": toolbar, canvas, fields of the selected box, list of
// boxes and the JSON view, in one DOM widget that works in both node renderers.
//
// The hidden multiline STRING widget `boxes` is the single source of truth: every edit writes it
// (canonical JSON, 4 decimals), and the editor redraws from it whenever it changes (workflow load,
// paste, programmatic set, width/height change, node resize). The canvas widget itself is never
// serialized, so workflows and API prompts carry only `boxes`.

import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import {
  area, capLabel, clamp, colourOf, COORDS, CUSTOM, GRID, isPreset, MAX_BOXES, MAX_LABEL,
  parseBoxes, placeNewBox, presetBoxes, PRESETS, sameGeometry, serializeBoxes,
} from "./layout_boxes.js";
import { addStyle, el, BUTTON_STYLE, INPUT_STYLE, keepKeysLocal, LAYOUT_CSS, SELECTED_IN_FRONT } from "./layout_dom.js";
import { drawScene } from "./layout_drawing.js";
import { CANVAS_HELP, CanvasInteraction } from "./layout_interaction.js";
import { JSON_VIEW_HEIGHT, JsonView } from "./layout_json_view.js";
import { chainCallback, publishWidgetValue, vueNodesMode, watchValue } from "./layout_node_hooks.js";

export const CANVAS_WIDGET = "layout_canvas";
const MIN_HEIGHT = 280; // CSS px of the editor without the JSON view
const CANVAS_GIVES = 100; // CSS px the canvas gives up to the JSON view before the node has to grow

export class LayoutEditor {
  constructor(node) {
    addStyle("msp-layout-css", LAYOUT_CSS);
    this.node = node;
    const find = (name) => node.widgets?.find((w) => w.name === name);
    this.boxesWidget = find("boxes");
    this.widthWidget = find("width");
    this.heightWidget = find("height");
    this.presetWidget = find("preset");
    this.text = null; // the STRING last parsed
    this.boxes = [];
    this.error = null;
    this.warnings = [];
    this.selected = -1;
    this.snap = true;
    this.runBoxes = null; // boxes the backend used in the last run (e.g. from a MASK)
    this.image = null; // HTMLImageElement shown behind the boxes after a run
    this.imageUrl = null;
    this.imageW = 0;
    this.imageH = 0;
    this.rendered = [];
    this.renderKey = "";
    this.cssW = 0;
    this.cssH = 0;
    this.disposed = false; // the node was removed (undo / redo rebuilds nodes)
    this.json = new JsonView((text) => this.onJsonEdit(text), () => this.tellChangeTracker());
    this.buildDom();
    this.interaction = new CanvasInteraction(this);
    this.hideBoxesWidget();
    this.hookWidgets();
    this.widget = node.addDOMWidget(CANVAS_WIDGET, "msp_layout_canvas", this.root, {
      serialize: false,
      hideOnZoom: false,
      getMinHeight: () => this.minHeight(),
      onDraw: () => this.poll(), // the LiteGraph canvas only; Nodes 2.0 never draws widgets
      afterResize: () => this.fit(),
    });
    this.widget.serialize = false; // keeps widgets_values = [boxes, width, height, preset]
    this.widget.mspDebug = () => this.debug();
    this.widget.mspEditor = this;
    // the stage's size, not the node's, in both renderers (Nodes 2.0 sizes nodes by CSS)
    this.resizeObserver = new ResizeObserver(() => this.fit());
    this.resizeObserver.observe(this.stage);
    this.sync(true);
  }

  /**
   * Nodes 2.0 keeps a node's component when undo / redo rebuilds the graph (same node id) and with it
   * the element of the replaced node's editor, whose edits would reach the old node only: put this
   * editor's element in its place. Called after configure and once more on the next frames.
   */
  takeOverStaleEditor() {
    const swap = () => {
      if (!vueNodesMode() || this.disposed || this.root.isConnected || this.node.graph !== app.canvas?.graph) return;
      const shell = document.querySelector(`.lg-node[data-node-id="${CSS.escape(String(this.node.id))}"]`);
      const stale = shell?.querySelector(".msp-layout");
      if (stale && stale !== this.root) stale.replaceWith(this.root);
    };
    swap();
    requestAnimationFrame(() => {
      swap();
      requestAnimationFrame(swap);
    });
  }

  // ---------------------------------------------------------------- widgets / the STRING

  hideBoxesWidget() {
    const w = this.boxesWidget;
    if (!w) return;
    w.hidden = true;
    w.options = w.options ?? {};
    w.options.hidden = true; // Nodes 2.0 skips it
    w.computeSize = () => [0, -4]; // no space in the LiteGraph node's layout
  }

  hookWidgets() {
    const editor = this;
    const w = this.boxesWidget;
    if (w) {
      // Any programmatic set (configure, paste, extensions) lands here.
      if (w.options && typeof w.options.setValue === "function") {
        const setValue = w.options.setValue;
        w.options.setValue = function (v) {
          setValue.call(this, v);
          editor.sync();
        };
      }
      chainCallback(w, "callback", () => editor.sync());
    }
    for (const size of [this.widthWidget, this.heightWidget]) {
      if (!size) continue;
      chainCallback(size, "callback", () => editor.sync());
      watchValue(size, () => editor.sync());
    }
    if (this.presetWidget) {
      chainCallback(this.presetWidget, "callback", (value) => editor.onPresetWidget(value));
      watchValue(this.presetWidget, () => editor.render()); // its note
    }
  }

  /** The preset combo was changed in the UI: its boxes become the drawn boxes, the combo goes back to custom. */
  onPresetWidget(value) {
    if (value === CUSTOM || !isPreset(value) || this.isLinked("preset")) {
      this.render();
      return;
    }
    this.presetWidget.value = CUSTOM; // first: the drawn boxes stay the truth, no stale note
    this.applyPreset(value);
    publishWidgetValue(this.presetWidget);
    this.node.setDirtyCanvas(true, true);
  }

  isLinked(name) {
    return this.node.inputs?.some((i) => i.widget?.name === name && i.link != null) ?? false;
  }

  hasInputLink(name) {
    return this.node.inputs?.some((i) => i.name === name && !i.widget && i.link != null) ?? false;
  }

  editable() {
    return !this.error && !this.isLinked("boxes");
  }

  size() {
    const w = Number(this.widthWidget?.value);
    const h = Number(this.heightWidget?.value);
    return [w > 0 ? w : 1024, h > 0 ? h : 1024];
  }

  /** Re-read the STRING (and width/height); cheap when nothing changed. Over-long labels are capped in the STRING. */
  sync(force = false) {
    const text = String(this.boxesWidget?.value ?? "");
    const [W, H] = this.size();
    const changedText = force || text !== this.text;
    if (!changedText && W === this.W && H === this.H) return;
    let rewrite = null;
    if (changedText) {
      const parsed = parseBoxes(text);
      this.text = text;
      this.boxes = parsed.boxes;
      this.error = parsed.error;
      this.warnings = parsed.warnings;
      if (this.selected >= this.boxes.length) this.selected = -1;
      if (parsed.capped) rewrite = this.text = serializeBoxes(parsed.boxes);
    }
    this.W = W;
    this.H = H;
    if (rewrite !== null && this.boxesWidget) this.boxesWidget.value = rewrite; // re-enters sync: no change
    this.json.show(this.text);
    this.fit();
    this.refreshPanel();
  }

  /** Catches any change the hooks missed; every frame on the LiteGraph canvas, on pointer entry in Nodes 2.0. */
  poll() {
    const text = String(this.boxesWidget?.value ?? "");
    const [W, H] = this.size();
    if (text !== this.text || W !== this.W || H !== this.H) this.sync();
    if (this.currentRenderKey() !== this.renderKey) this.fit();
  }

  currentRenderKey() {
    return `${this.pixelRatio()}|${this.presetWidget?.value}|${this.isLinked("boxes")}|${this.hasInputLink("mask")}`;
  }

  /** Write the boxes into the STRING (canonical JSON) and redraw from it. */
  commit(boxes = this.boxes, { track = true } = {}) {
    if (this.boxesWidget) this.boxesWidget.value = serializeBoxes(boxes);
    this.sync();
    this.node.setDirtyCanvas(true, true);
    if (track) this.tellChangeTracker();
  }

  /** Pointer and key events on our elements do not reach the change tracker's listeners: tell it (undo, "modified"). */
  tellChangeTracker() {
    app.extensionManager?.workflow?.activeWorkflow?.changeTracker?.checkState?.();
  }

  applyPreset(name, options) {
    const boxes = presetBoxes(name, this.error ? [] : this.boxes);
    if (!boxes) return;
    this.selected = -1;
    this.commit(boxes, options);
  }

  /** Typing in the JSON view: the undo step is taken when the text is done (its change event), not per key. */
  onJsonEdit(text) {
    if (!this.boxesWidget || this.isLinked("boxes")) return;
    this.boxesWidget.value = text;
    this.sync();
  }

  minHeight() {
    return MIN_HEIGHT + (this.json.visible ? JSON_VIEW_HEIGHT + 4 - CANVAS_GIVES : 0);
  }

  /** The JSON view takes its room from the canvas: the node keeps its size (and stays inside its group) unless too small. */
  toggleJson() {
    this.json.visible = !this.json.visible;
    this.jsonButton.textContent = this.json.visible ? "hide JSON" : "JSON";
    this.root.style.minHeight = `${this.minHeight()}px`; // Nodes 2.0 grows the node only to its content's minimum
    if (!vueNodesMode() && this.json.visible) {
      const needed = this.node.computeSize?.()[1] ?? 0;
      if (needed > this.node.size[1]) this.node.setSize([this.node.size[0], needed]);
    }
    this.node.setDirtyCanvas(true, true);
  }

  /** Nodes 2.0: select the node when its editor is used (the LiteGraph canvas does this for DOM widgets itself). */
  selectNode() {
    if (!vueNodesMode() || this.node.selected || !app.canvas || this.node.graph !== app.canvas.graph) return;
    app.canvas.selectNode(this.node);
  }

  /**
   * Nodes 2.0 brings a node forward when it is dragged, not when it is clicked: an overlapping node pasted
   * later would keep covering this one's editor. While selected, the node is drawn in front.
   */
  showSelected(selected) {
    this.root.closest(".lg-node")?.toggleAttribute(SELECTED_IN_FRONT, selected && vueNodesMode());
  }

  // ---------------------------------------------------------------- DOM

  buildDom() {
    this.root = el("div", { className: "msp-layout widget-expands" }, {
      // fills the widget's box in both renderers; `widget-expands` gives it the node's spare height in Nodes 2.0,
      // and its width never follows its content (a long label must not widen a Nodes 2.0 node)
      width: "100%", height: "100%", minHeight: `${MIN_HEIGHT}px`, minWidth: "0", contain: "inline-size",
      display: "flex", flexDirection: "column", gap: "4px", boxSizing: "border-box",
      font: "12px sans-serif", color: "var(--input-text, #ddd)", overflow: "hidden", userSelect: "none",
    });
    this.root.addEventListener("pointerenter", () => this.poll());
    // as the LiteGraph canvas does for DOM widgets: using the editor selects its node (and so brings it forward)
    this.root.addEventListener("pointerdown", () => this.selectNode(), true);
    this.root.addEventListener("focusin", () => this.selectNode());
    const toolbar = el("div", {}, { display: "flex", flexWrap: "wrap", gap: "4px", alignItems: "center", flex: "0 0 auto" });
    this.presetMenu = el("select", { className: "msp-layout-presets", title: "replace the boxes by a preset layout (labels are kept)" }, { ...INPUT_STYLE, width: "104px" });
    this.presetMenu.append(el("option", { value: "", textContent: "presets…" }));
    for (const name of Object.keys(PRESETS)) this.presetMenu.append(el("option", { value: name, textContent: name }));
    this.presetMenu.addEventListener("change", () => {
      const name = this.presetMenu.value;
      this.presetMenu.value = "";
      if (name) this.applyPreset(name);
    });
    const snapLabel = el("label", { title: "snap to the 8-pixel latent grid" }, { display: "flex", alignItems: "center", gap: "2px", whiteSpace: "nowrap" });
    this.snapBox = el("input", { type: "checkbox", checked: true, className: "msp-layout-snap" });
    this.snapBox.addEventListener("change", () => {
      this.snap = this.snapBox.checked;
      this.refreshPanel();
    });
    snapLabel.append(this.snapBox, document.createTextNode("snap 8px"));
    const button = (text, cls, title, action) => {
      const b = el("button", { type: "button", textContent: text, className: cls, title }, BUTTON_STYLE);
      b.addEventListener("click", (e) => {
        e.stopPropagation();
        action();
      });
      return b;
    };
    this.addButton = button("+ box", "msp-layout-add", "add a box (also when boxes cover the whole image); or Shift+drag on the canvas", () => this.addBox());
    this.upButton = button("▲", "msp-layout-up", "move the selected box earlier in the subject order", () => this.moveSelected(-1));
    this.downButton = button("▼", "msp-layout-down", "move the selected box later in the subject order", () => this.moveSelected(1));
    this.deleteButton = button("Delete", "msp-layout-delete", "delete the selected box (Delete / Backspace on the canvas)", () => this.deleteSelected());
    this.clearButton = button("Clear", "msp-layout-clear", "remove all boxes", () => {
      this.selected = -1;
      this.commit([]);
    });
    this.jsonButton = button("JSON", "msp-layout-json", "show / hide the boxes as JSON text", () => this.toggleJson());
    toolbar.append(this.presetMenu, snapLabel, this.addButton, this.upButton, this.downButton, this.deleteButton, this.clearButton, this.jsonButton);

    // the canvas is out of the flow: the stage's size comes from the node, never from the canvas
    this.stage = el("div", {}, { flex: "1 1 0", minHeight: "44px", position: "relative", overflow: "hidden" });
    this.canvas = el("canvas", { className: "msp-layout-canvas", tabIndex: 0, title: CANVAS_HELP }, {
      position: "absolute", top: "0", left: "0", display: "block", touchAction: "none", cursor: "crosshair", outline: "none",
    });
    this.canvas.addEventListener("focus", () => this.render());
    this.canvas.addEventListener("blur", () => this.render());
    this.stage.append(this.canvas);

    const fields = el("div", {}, { display: "flex", flexWrap: "wrap", gap: "4px", alignItems: "center", flex: "0 0 auto" });
    this.badge = el("span", { className: "msp-layout-badge" }, {
      minWidth: "22px", textAlign: "center", borderRadius: "4px", padding: "1px 3px", color: "#000", fontWeight: "bold",
    });
    this.labelInput = el("input", {
      type: "text", className: "msp-layout-label", placeholder: "label (subject phrase)", maxLength: MAX_LABEL,
      title: "the selected box's label: the subject's phrase, e.g. dog",
    }, { ...INPUT_STYLE, flex: "1 1 100px" });
    // the label is written at every key, and becomes one undo step when typing is done
    this.labelInput.addEventListener("input", () => {
      const box = this.boxes[this.selected];
      if (!box || !this.editable()) return;
      box.label = capLabel(this.labelInput.value);
      this.commit(this.boxes, { track: false });
    });
    this.labelInput.addEventListener("change", () => this.tellChangeTracker());
    const labelRow = el("div", {}, { display: "flex", gap: "4px", alignItems: "center", flex: "1 1 140px", minWidth: "0" });
    labelRow.append(this.badge, this.labelInput);
    fields.append(labelRow);
    this.numberInputs = {};
    const numbers = el("div", {}, { display: "flex", gap: "4px", alignItems: "center", flexWrap: "wrap" });
    for (const c of COORDS) {
      const label = el("label", { title: `${c} of the selected box, in pixels of width × height` }, {
        display: "flex", alignItems: "center", gap: "2px",
      });
      const input = el("input", { type: "number", className: `msp-layout-${c}`, min: 0 }, { ...INPUT_STYLE, width: "54px" });
      input.addEventListener("change", () => this.onNumberField());
      label.append(document.createTextNode(c), input);
      numbers.append(label);
      this.numberInputs[c] = input;
    }
    fields.append(numbers);
    for (const input of [this.labelInput, ...Object.values(this.numberInputs)]) keepKeysLocal(input);

    this.list = el("div", { className: "msp-layout-list" }, {
      // fixed height: the canvas must not move under the pointer when boxes are added
      height: "74px", flex: "0 0 auto", overflowY: "auto", display: "flex", flexDirection: "column", gap: "1px",
    });
    this.root.append(toolbar, this.stage, fields, this.list, this.json.element);
  }

  refreshPanel() {
    const box = this.boxes[this.selected];
    const editable = this.editable();
    const [W, H] = this.size();
    this.badge.textContent = box ? String(this.selected + 1) : "–";
    this.badge.style.background = box ? colourOf(this.selected) : "transparent";
    this.badge.style.color = box ? "#000" : "inherit";
    this.labelInput.disabled = !box || !editable;
    const label = box ? box.label : "";
    if (this.labelInput.value !== label) this.labelInput.value = label;
    for (const c of COORDS) {
      const input = this.numberInputs[c];
      input.disabled = !box || !editable;
      input.step = this.snap ? GRID : 1;
      input.max = c[0] === "x" ? W : H;
      const value = box ? String(Math.round(box[c] * (c[0] === "x" ? W : H))) : "";
      if (input.value !== value && document.activeElement !== input) input.value = value;
    }
    this.addButton.disabled = !editable || this.boxes.length >= MAX_BOXES;
    this.upButton.disabled = !box || !editable || this.selected === 0;
    this.downButton.disabled = !box || !editable || this.selected === this.boxes.length - 1;
    this.deleteButton.disabled = !box || !editable;
    const linked = this.isLinked("boxes");
    this.clearButton.disabled = linked || (!this.error && !this.boxes.length); // Clear also recovers from bad JSON
    this.presetMenu.disabled = linked;
    this.json.element.readOnly = linked;

    this.list.replaceChildren();
    for (const [i, b] of this.boxes.entries()) {
      const row = el("div", { className: "msp-layout-row" }, {
        display: "flex", gap: "6px", alignItems: "center", padding: "0 4px", borderRadius: "3px", cursor: "pointer",
        background: i === this.selected ? "rgba(255,255,255,0.12)" : "transparent",
      });
      const swatch = el("span", { textContent: String(i + 1) }, {
        background: colourOf(i), color: "#000", borderRadius: "3px", minWidth: "18px", textAlign: "center", fontWeight: "bold",
      });
      const name = el("span", { textContent: b.label || "(no label)" }, {
        flex: "1 1 auto", minWidth: "0", overflow: "hidden", textOverflow: "ellipsis", whiteSpace: "nowrap", opacity: b.label ? "1" : "0.6",
      });
      const px = (v, n) => Math.round(v * n);
      const where = el("span", { textContent: `${px(b.x1, W)},${px(b.y1, H)} → ${px(b.x2, W)},${px(b.y2, H)}` }, { opacity: "0.6", whiteSpace: "nowrap" });
      row.append(swatch, name, where);
      row.addEventListener("click", (e) => {
        e.stopPropagation();
        this.select(i);
      });
      this.list.append(row);
    }
  }

  select(i) {
    this.selected = i;
    this.refreshPanel();
    this.render();
  }

  addBox() {
    if (!this.editable() || this.boxes.length >= MAX_BOXES) return;
    const boxes = [...this.boxes, placeNewBox(this.boxes, this.size())];
    this.selected = boxes.length - 1;
    this.commit(boxes);
  }

  moveSelected(delta) {
    const i = this.selected;
    const j = i + delta;
    if (!this.editable() || i < 0 || j < 0 || j >= this.boxes.length) return;
    const boxes = this.boxes.slice();
    [boxes[i], boxes[j]] = [boxes[j], boxes[i]];
    this.selected = j;
    this.commit(boxes);
  }

  deleteSelected() {
    if (!this.editable() || this.selected < 0) return;
    const boxes = this.boxes.filter((_, i) => i !== this.selected);
    this.selected = -1;
    this.commit(boxes);
  }

  onNumberField() {
    const box = this.boxes[this.selected];
    if (!box || !this.editable()) return;
    const [W, H] = this.size();
    const next = { ...box };
    for (const c of COORDS) {
      const v = Number(this.numberInputs[c].value);
      if (!Number.isFinite(v)) return this.refreshPanel();
      next[c] = clamp(v / (c[0] === "x" ? W : H), 0, 1);
    }
    if (next.x1 >= next.x2 || next.y1 >= next.y2) return this.refreshPanel(); // refuse, show the box again
    const boxes = this.boxes.slice();
    boxes[this.selected] = next;
    this.commit(boxes);
  }

  // ---------------------------------------------------------------- drawing

  pixelRatio() {
    const zoom = app.canvas?.ds?.scale ?? 1;
    return (window.devicePixelRatio || 1) * clamp(zoom, 1, 3);
  }

  /** Size the canvas to the stage with the output's aspect ratio (centred in it), then draw. */
  fit() {
    const sw = this.stage.clientWidth;
    const sh = this.stage.clientHeight;
    const [W, H] = this.size();
    if (sw > 0 && sh > 0) {
      const aspect = W / H;
      const cw = Math.max(1, Math.floor(Math.min(sw, sh * aspect)));
      const ch = Math.max(1, Math.floor(cw / aspect));
      const ratio = this.pixelRatio();
      if (cw !== this.cssW || ch !== this.cssH || this.canvas.width !== Math.round(cw * ratio)) {
        this.cssW = cw;
        this.cssH = ch;
        this.canvas.style.width = `${cw}px`;
        this.canvas.style.height = `${ch}px`;
        this.canvas.width = Math.round(cw * ratio);
        this.canvas.height = Math.round(ch * ratio);
      }
      this.canvas.style.left = `${Math.floor((sw - cw) / 2)}px`;
      this.canvas.style.top = `${Math.floor((sh - ch) / 2)}px`;
    }
    this.render();
  }

  notes() {
    const notes = [];
    if (this.isLinked("boxes")) notes.push("the boxes come from the linked input");
    const preset = this.presetWidget?.value;
    if (isPreset(preset)) notes.push(`preset '${preset}' is used instead of these boxes`);
    else if (preset && preset !== CUSTOM) notes.push(`'${preset}' is no preset: choose custom or a preset`);
    if (this.hasInputLink("mask")) notes.push("MASK connected: it supplies the boxes (dashed after a run); labels come from here");
    else if (this.runBoxes && !sameGeometry(this.runBoxes, this.boxes)) notes.push("dashed: the boxes used in the last run");
    if (!this.error && !this.boxes.length) notes.push("no boxes: drag to draw the box of subject 1");
    else if (!this.error && this.boxes.some((b) => area(b) > 0.98)) notes.push("a box covers the image: Shift+drag or + box adds another");
    notes.push(...this.warnings.slice(0, 2));
    return notes;
  }

  render() {
    this.renderKey = this.currentRenderKey();
    const ctx = this.canvas.getContext("2d");
    const w = this.cssW;
    const h = this.cssH;
    if (!ctx || !w || !h) return;
    const ratio = this.canvas.width / w;
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    this.rendered = drawScene(ctx, {
      w, h, image: this.image, boxes: this.boxes, selected: this.selected, drag: this.interaction.drag, runBoxes: this.runBoxes,
      error: this.error, notes: this.notes(), focused: document.activeElement === this.canvas,
    });
  }

  // ---------------------------------------------------------------- after a run

  onExecuted(message) {
    const layout = message?.msp_layout?.[0];
    if (typeof layout === "string") {
      const parsed = parseBoxes(layout);
      this.runBoxes = parsed.error ? null : parsed.boxes;
    }
    const entry = message?.msp_image?.[0];
    if (entry?.filename) {
      const params = new URLSearchParams({ filename: entry.filename, subfolder: entry.subfolder ?? "", type: entry.type ?? "temp" });
      const url = api.apiURL(`/view?${params}${app.getRandParam?.() ?? ""}`);
      const image = new Image();
      image.onload = () => {
        if (this.imageUrl !== url) return;
        this.image = image;
        this.imageW = image.naturalWidth;
        this.imageH = image.naturalHeight;
        this.render();
      };
      this.imageUrl = url;
      image.src = url;
    } else {
      this.image = null;
      this.imageUrl = null;
    }
    this.render();
  }

  debug() {
    return {
      text: this.text,
      boxes: this.boxes.map((b) => ({ ...b })),
      rendered: this.rendered.map((b) => ({ ...b })),
      error: this.error,
      warnings: this.warnings.slice(),
      notes: this.notes(),
      selected: this.selected,
      snap: this.snap,
      size: this.size(),
      canvasCss: [this.cssW, this.cssH],
      runBoxes: this.runBoxes?.map((b) => ({ ...b })) ?? null,
      image: this.image ? [this.imageW, this.imageH] : null,
      boxesHidden: !!this.boxesWidget?.hidden,
      jsonVisible: this.json.visible,
      vueNodes: vueNodesMode(),
    };
  }

  dispose() {
    this.disposed = true;
    this.resizeObserver?.disconnect();
  }
}
