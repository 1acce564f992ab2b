// Interactive box canvas for "Draw Layout Box" (MSP_DrawLayoutBox).
//
// The hidden multiline STRING widget `boxes` is the single source of truth: every edit on the
// canvas writes it (canonical JSON, 4 decimals), and the canvas redraws from it whenever it
// changes (workflow load, paste, programmatic set, width/height change, node resize). The
// canvas widget itself is never serialized, so workflows and API prompts carry only `boxes`.
// Text (numbers, labels) is drawn on the canvas or set through textContent / .value only.

import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const NODE_ID = "MSP_DrawLayoutBox";
const CANVAS_WIDGET = "layout_canvas";
const CUSTOM = "custom";
const GRID = 8; // SDXL latent grid, in image pixels
const MAX_BOXES = 32; // attention_patches/layout.py MAX_BOXES
const MAX_LABEL = 200; // attention_patches/layout.py MAX_LABEL_LENGTH
const HANDLE_HIT = 7; // canvas CSS px
const HANDLE_SIZE = 7;

// Same colours, in the same order, as the Router Mask Preview backend.
export const PALETTE = [
  "#e6194b", "#3cb44b", "#0082c8", "#f58230", "#911eb4", "#46f0f0",
  "#f032e6", "#d2f53c", "#fabebe", "#008080", "#dcbeff", "#aa6e28",
];

// attention_patches/layout.py PRESETS (MS-Diffusion's defaults and MS-Bench layouts).
export const PRESETS = {
  "one subject": [[0.25, 0.25, 0.75, 0.75]],
  "two subjects": [[0.0, 0.25, 0.4, 0.75], [0.6, 0.25, 1.0, 0.75]],
  "side by side": [[0.0, 0.25, 0.5, 0.75], [0.5, 0.25, 1.0, 0.75]],
  "three in a row": [[0.0, 0.25, 0.35, 0.75], [0.35, 0.25, 0.65, 0.75], [0.65, 0.25, 1.0, 0.75]],
  "subject + scene": [[0.25, 0.25, 0.75, 0.75], [0.0, 0.0, 1.0, 1.0]],
  "subject + hat": [[0.25, 0.25, 0.75, 0.75], [0.25, 0.0, 0.75, 0.25]],
  "top / middle / bottom wear": [[0.25, 0.0, 0.75, 0.25], [0.25, 0.25, 0.75, 0.6], [0.25, 0.6, 0.75, 1.0]],
};

const COORDS = ["x1", "y1", "x2", "y2"];
const colourOf = (i) => PALETTE[i % PALETTE.length];
const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));
const round4 = (v) => {
  const r = Math.round(v * 1e4) / 1e4;
  return r === 0 ? 0 : r; // no -0
};

function rgba(hex, alpha) {
  const n = parseInt(hex.slice(1), 16);
  return `rgba(${(n >> 16) & 255}, ${(n >> 8) & 255}, ${n & 255}, ${alpha})`;
}

// Python's json.dumps spelling (0.0, ", ", ": "), so the default string round-trips unchanged.
function formatNumber(v) {
  const r = round4(v);
  return Number.isInteger(r) ? r.toFixed(1) : String(r);
}

export function serializeBoxes(boxes) {
  const items = boxes.map(
    (b) => `{${COORDS.map((c) => `"${c}": ${formatNumber(b[c])}`).join(", ")}, "label": ${JSON.stringify(b.label ?? "")}}`,
  );
  return `[${items.join(", ")}]`;
}

const isFiniteNumber = (v) => typeof v === "number" && Number.isFinite(v);

/** The boxes of the STRING, as the backend reads them (its accepted forms), without throwing. */
export function parseBoxes(text) {
  const result = { boxes: [], error: null, warnings: [] };
  if (typeof text !== "string" || !text.trim()) return result;
  let data;
  try {
    data = JSON.parse(text);
  } catch (e) {
    result.error = `the boxes are not valid JSON (${String(e.message || e).slice(0, 80)})`;
    return result;
  }
  if (data && typeof data === "object" && !Array.isArray(data) && "boxes" in data) data = data.boxes;
  if (!Array.isArray(data)) {
    result.error = "the boxes must be a JSON list of boxes";
    return result;
  }
  if (data.length > MAX_BOXES) {
    result.error = `${data.length} boxes; at most ${MAX_BOXES} are supported`;
    return result;
  }
  for (const [i, item] of data.entries()) {
    let values;
    let label = "";
    if (Array.isArray(item) && item.length === 4) {
      values = item;
    } else if (item && typeof item === "object" && !Array.isArray(item)) {
      values = COORDS.map((c) => item[c]);
      if (item.label !== undefined && item.label !== null) {
        if (typeof item.label !== "string") {
          result.error = `box ${i + 1}: the label must be text`;
          return result;
        }
        label = item.label;
      }
    } else {
      result.error = `box ${i + 1}: expected {"x1", "y1", "x2", "y2", "label"} or [x1, y1, x2, y2]`;
      return result;
    }
    if (!values.every(isFiniteNumber)) {
      result.error = `box ${i + 1}: x1, y1, x2, y2 must be finite numbers`;
      return result;
    }
    const [x1, y1, x2, y2] = values;
    result.boxes.push({ x1, y1, x2, y2, label });
    const name = `box ${i + 1}`;
    if (values.every((v) => v === 0)) result.warnings.push(`${name} is all zeros`);
    else if (values.some((v) => v < 0 || v > 1)) result.warnings.push(`${name} is outside 0..1`);
    else if (x1 >= x2 || y1 >= y2) result.warnings.push(`${name} is empty or reversed`);
  }
  return result;
}

function chainCallback(object, property, callback) {
  const original = object[property];
  object[property] = function (...args) {
    const r = original?.apply(this, args);
    callback.apply(this, args);
    return r;
  };
}

function el(tag, props = {}, style = {}) {
  const e = document.createElement(tag);
  Object.assign(e, props);
  Object.assign(e.style, style);
  return e;
}

const BUTTON_STYLE = {
  background: "var(--comfy-input-bg, #222)", color: "var(--input-text, #ddd)",
  border: "1px solid var(--border-color, #444)", borderRadius: "4px", padding: "1px 6px",
  font: "inherit", cursor: "pointer",
};
const INPUT_STYLE = {
  background: "var(--comfy-input-bg, #222)", color: "var(--input-text, #ddd)",
  border: "1px solid var(--border-color, #444)", borderRadius: "4px", padding: "1px 4px",
  font: "inherit", minWidth: "0", boxSizing: "border-box",
};

class LayoutCanvas {
  constructor(node) {
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
    this.drag = null;
    this.runBoxes = null; // boxes the backend used in the last run (e.g. from a MASK)
    this.image = null; // HTMLImageElement shown behind the boxes after a run
    this.imageUrl = null;
    this.imageW = 0;
    this.imageH = 0;
    this.rendered = [];
    this.renderKey = "";
    this.cssW = 0;
    this.cssH = 0;
    this.buildDom();
    this.hideBoxesWidget(true);
    this.hookWidgets();
    this.widget = node.addDOMWidget(CANVAS_WIDGET, "msp_layout_canvas", this.root, {
      serialize: false,
      hideOnZoom: false,
      getMinHeight: () => 280,
      onDraw: () => this.poll(),
      afterResize: () => this.fit(),
    });
    this.widget.serialize = false; // keeps widgets_values = [boxes, width, height, preset]
    this.widget.mspDebug = () => this.debug();
    this.widget.mspEditor = this;
    this.resizeObserver = new ResizeObserver(() => this.fit());
    this.resizeObserver.observe(this.stage);
    this.sync(true);
  }

  // ---------------------------------------------------------------- widgets / the STRING

  hideBoxesWidget(hidden) {
    const w = this.boxesWidget;
    if (!w) return;
    w.hidden = hidden;
    w.options = w.options ?? {};
    w.options.hidden = hidden; // Nodes 2.0 (Vue) renderer
    if (hidden) w.computeSize = () => [0, -4]; // no space in the node's layout
    else delete w.computeSize;
    this.jsonButton && (this.jsonButton.textContent = hidden ? "JSON" : "hide JSON");
  }

  hookWidgets() {
    const editor = this;
    const w = this.boxesWidget;
    if (w) {
      // Any programmatic set (configure, paste, extensions, the textarea) lands here.
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
    }
  }

  onPresetWidget(value) {
    if (value === CUSTOM || !(value in PRESETS) || this.isLinked("preset")) {
      this.render();
      return;
    }
    this.applyPreset(value);
    this.presetWidget.value = CUSTOM; // the drawn boxes stay the truth
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

  /** Re-read the STRING (and width/height); cheap when nothing changed. */
  sync(force = false) {
    const text = String(this.boxesWidget?.value ?? "");
    const [W, H] = this.size();
    const changedText = force || text !== this.text;
    if (!changedText && W === this.W && H === this.H) return;
    if (changedText) {
      const parsed = parseBoxes(text);
      this.text = text;
      this.boxes = parsed.boxes;
      this.error = parsed.error;
      this.warnings = parsed.warnings;
      if (this.selected >= this.boxes.length) this.selected = -1;
    }
    this.W = W;
    this.H = H;
    this.fit();
    this.refreshPanel();
  }

  /** Called every frame the node is drawn: catches any change the hooks missed. */
  poll() {
    const text = String(this.boxesWidget?.value ?? "");
    const [W, H] = this.size();
    if (text !== this.text || W !== this.W || H !== this.H) this.sync();
    const key = `${this.pixelRatio()}|${this.presetWidget?.value}|${this.isLinked("boxes")}|${this.hasInputLink("mask")}`;
    if (key !== this.renderKey) this.fit();
  }

  /** Write the boxes into the STRING (canonical JSON) and redraw from it. */
  commit(boxes = this.boxes, { track = true } = {}) {
    const text = serializeBoxes(boxes);
    if (this.boxesWidget) this.boxesWidget.value = text;
    this.sync(true);
    this.node.setDirtyCanvas(true, true);
    // pointer events do not reach the change tracker's window listeners: tell it (undo, "modified")
    if (track) app.extensionManager?.workflow?.activeWorkflow?.changeTracker?.checkState?.();
  }

  applyPreset(name, options) {
    const coords = PRESETS[name];
    if (!coords) return;
    const old = this.error ? [] : this.boxes;
    const boxes = coords.map(([x1, y1, x2, y2], i) => ({ x1, y1, x2, y2, label: old[i]?.label ?? "" }));
    this.selected = -1;
    this.commit(boxes, options);
  }

  // ---------------------------------------------------------------- DOM

  buildDom() {
    this.root = el("div", { className: "msp-layout" }, {
      display: "flex", flexDirection: "column", gap: "4px", boxSizing: "border-box",
      font: "12px sans-serif", color: "var(--input-text, #ddd)", overflow: "hidden", userSelect: "none",
    });
    const toolbar = el("div", {}, { display: "flex", flexWrap: "wrap", gap: "4px", alignItems: "center" });
    this.presetMenu = el("select", { className: "msp-layout-presets", title: "replace the boxes by a preset layout (labels are kept)" }, { ...INPUT_STYLE, width: "112px" });
    this.presetMenu.append(el("option", { value: "", textContent: "presets…" }));
    for (const name of Object.keys(PRESETS)) this.presetMenu.append(el("option", { value: name, textContent: name }));
    this.presetMenu.addEventListener("change", () => {
      const name = this.presetMenu.value;
      this.presetMenu.value = "";
      if (name) this.applyPreset(name);
    });
    const snapLabel = el("label", { title: "snap to the 8-pixel latent grid" }, { display: "flex", alignItems: "center", gap: "2px" });
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
    this.upButton = button("▲ up", "msp-layout-up", "move the selected box earlier in the subject order", () => this.moveSelected(-1));
    this.downButton = button("▼ down", "msp-layout-down", "move the selected box later in the subject order", () => this.moveSelected(1));
    this.deleteButton = button("Delete", "msp-layout-delete", "delete the selected box (Delete / Backspace on the canvas)", () => this.deleteSelected());
    this.clearButton = button("Clear", "msp-layout-clear", "remove all boxes", () => {
      this.selected = -1;
      this.commit([]);
    });
    this.jsonButton = button("JSON", "msp-layout-json", "show / hide the boxes as JSON text", () => {
      this.hideBoxesWidget(!this.boxesWidget?.hidden);
      const grow = this.boxesWidget?.hidden ? -140 : 140;
      this.node.setSize([this.node.size[0], Math.max(this.node.size[1] + grow, 200)]);
      this.node.setDirtyCanvas(true, true);
    });
    toolbar.append(this.presetMenu, snapLabel, this.upButton, this.downButton, this.deleteButton, this.clearButton, this.jsonButton);

    this.stage = el("div", {}, {
      flex: "1 1 auto", minHeight: "60px", position: "relative", display: "flex",
      alignItems: "flex-start", justifyContent: "center", overflow: "hidden",
    });
    this.canvas = el("canvas", { className: "msp-layout-canvas", tabIndex: 0 }, {
      display: "block", touchAction: "none", cursor: "crosshair", outline: "none",
    });
    this.canvas.addEventListener("focus", () => this.render());
    this.canvas.addEventListener("blur", () => this.render());
    this.canvas.addEventListener("pointerdown", (e) => this.onPointerDown(e));
    this.canvas.addEventListener("pointermove", (e) => this.onPointerMove(e));
    this.canvas.addEventListener("pointerup", (e) => this.onPointerUp(e));
    this.canvas.addEventListener("pointercancel", (e) => this.onPointerUp(e, true));
    this.canvas.addEventListener("keydown", (e) => this.onKeyDown(e));
    this.stage.append(this.canvas);

    const fields = el("div", {}, { display: "flex", gap: "4px", alignItems: "center" });
    this.badge = el("span", { className: "msp-layout-badge" }, {
      minWidth: "22px", textAlign: "center", borderRadius: "4px", padding: "1px 3px", color: "#000", fontWeight: "bold",
    });
    this.labelInput = el("input", {
      type: "text", className: "msp-layout-label", placeholder: "label (subject phrase)", maxLength: MAX_LABEL,
      title: "the selected box's label: the subject's phrase, e.g. dog",
    }, { ...INPUT_STYLE, flex: "1 1 80px" });
    this.labelInput.addEventListener("input", () => {
      const box = this.boxes[this.selected];
      if (!box || !this.editable()) return;
      box.label = this.labelInput.value;
      this.commit();
    });
    fields.append(this.badge, this.labelInput);
    this.numberInputs = {};
    for (const c of COORDS) {
      const label = el("label", { title: `${c} of the selected box, in pixels of width × height` }, {
        display: "flex", alignItems: "center", gap: "2px",
      });
      const input = el("input", { type: "number", className: `msp-layout-${c}`, min: 0 }, { ...INPUT_STYLE, width: "58px" });
      input.addEventListener("change", () => this.onNumberField());
      label.append(document.createTextNode(c), input);
      fields.append(label);
      this.numberInputs[c] = input;
    }
    fields.append(el("span", { textContent: "px" }, { opacity: "0.7" }));
    for (const input of [this.labelInput, ...Object.values(this.numberInputs)]) {
      // typing here must not trigger graph shortcuts (Delete removing the node, ...)
      input.addEventListener("keydown", (e) => {
        if (!e.ctrlKey && !e.metaKey && !e.altKey) e.stopPropagation();
      });
    }

    this.list = el("div", { className: "msp-layout-list" }, {
      // fixed height: the canvas must not move under the pointer when boxes are added
      height: "74px", flex: "0 0 auto", overflowY: "auto", display: "flex", flexDirection: "column", gap: "1px",
    });
    this.root.append(toolbar, this.stage, fields, this.list);
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
    this.upButton.disabled = !box || !editable || this.selected === 0;
    this.downButton.disabled = !box || !editable || this.selected === this.boxes.length - 1;
    this.deleteButton.disabled = !box || !editable;
    const linked = this.isLinked("boxes");
    this.clearButton.disabled = linked || (!this.error && !this.boxes.length); // Clear also recovers from bad JSON
    this.presetMenu.disabled = linked;

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
        flex: "1 1 auto", overflow: "hidden", textOverflow: "ellipsis", whiteSpace: "nowrap", opacity: b.label ? "1" : "0.6",
      });
      const px = (v, n) => Math.round(v * n);
      const where = el("span", { textContent: `${px(b.x1, W)},${px(b.y1, H)} → ${px(b.x2, W)},${px(b.y2, H)}` }, { opacity: "0.6" });
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

  /** Size the canvas to the stage with the output's aspect ratio, then draw. */
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
    }
    this.render();
  }

  render() {
    this.renderKey = `${this.pixelRatio()}|${this.presetWidget?.value}|${this.isLinked("boxes")}|${this.hasInputLink("mask")}`;
    const ctx = this.canvas.getContext("2d");
    const w = this.cssW;
    const h = this.cssH;
    if (!ctx || !w || !h) return;
    const ratio = this.canvas.width / w;
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, w, h);
    ctx.fillStyle = "#1b1b1b";
    ctx.fillRect(0, 0, w, h);
    if (this.image) ctx.drawImage(this.image, 0, 0, w, h);
    // quarter lines
    ctx.strokeStyle = "rgba(255,255,255,0.08)";
    ctx.lineWidth = 1;
    ctx.beginPath();
    for (const f of [0.25, 0.5, 0.75]) {
      ctx.moveTo(Math.round(f * w) + 0.5, 0);
      ctx.lineTo(Math.round(f * w) + 0.5, h);
      ctx.moveTo(0, Math.round(f * h) + 0.5);
      ctx.lineTo(w, Math.round(f * h) + 0.5);
    }
    ctx.stroke();
    ctx.font = "bold 12px sans-serif";
    ctx.textBaseline = "top";

    this.rendered = [];
    const runDiffers = this.runBoxes && !sameGeometry(this.runBoxes, this.boxes);
    if (runDiffers) {
      ctx.save();
      ctx.setLineDash([6, 4]);
      ctx.lineWidth = 2;
      for (const [i, b] of this.runBoxes.entries()) {
        const r = this.rect(b);
        ctx.strokeStyle = colourOf(i);
        ctx.strokeRect(r.x + 1, r.y + 1, r.w - 2, r.h - 2);
        this.tag(ctx, `${i + 1}`, r.x + r.w - 4, r.y + r.h - 18, colourOf(i), "right");
      }
      ctx.restore();
    }

    if (!this.error) {
      // big boxes first, so small ones stay visible and clickable on top
      const order = this.boxes.map((b, i) => i).sort((a, b) => area(this.boxes[b]) - area(this.boxes[a]) || a - b);
      for (const i of order) {
        const b = this.drag?.index === i && this.drag.preview ? this.drag.preview : this.boxes[i];
        const r = this.rect(b);
        const colour = colourOf(i);
        const selected = i === this.selected;
        ctx.fillStyle = rgba(colour, selected ? 0.3 : 0.16);
        ctx.fillRect(r.x, r.y, r.w, r.h);
        const lw = selected ? 3 : 2;
        ctx.strokeStyle = "rgba(0,0,0,0.6)"; // dark under-stroke: visible on any background image
        ctx.lineWidth = lw + 2;
        ctx.strokeRect(r.x + lw / 2, r.y + lw / 2, r.w - lw, r.h - lw);
        ctx.strokeStyle = colour;
        ctx.lineWidth = lw;
        ctx.strokeRect(r.x + lw / 2, r.y + lw / 2, r.w - lw, r.h - lw);
        this.tag(ctx, b.label ? `${i + 1} ${b.label}` : `${i + 1}`, r.x + 3, r.y + 3, colour, "left", r.w - 6);
        this.rendered.push({ index: i, colour, x1: b.x1, y1: b.y1, x2: b.x2, y2: b.y2, label: b.label });
        if (selected) this.drawHandles(ctx, b, colour);
      }
      this.rendered.sort((a, b) => a.index - b.index);
      if (this.drag?.mode === "new" && this.drag.preview) {
        const r = this.rect(this.drag.preview);
        const colour = colourOf(this.boxes.length);
        ctx.setLineDash([4, 3]);
        ctx.strokeStyle = colour;
        ctx.lineWidth = 2;
        ctx.strokeRect(r.x, r.y, r.w, r.h);
        ctx.setLineDash([]);
      }
    }

    // messages: error (red, top), notes (grey, bottom)
    const notes = [];
    if (this.isLinked("boxes")) notes.push("the boxes come from the linked input");
    const preset = this.presetWidget?.value;
    if (preset && preset !== CUSTOM) notes.push(`preset '${preset}' is used instead of these boxes`);
    if (this.hasInputLink("mask")) notes.push("MASK connected: it supplies the boxes (dashed after a run); labels come from here");
    else if (runDiffers) notes.push("dashed: the boxes used in the last run");
    if (!this.error && !this.boxes.length) notes.push(`no boxes: drag to draw the box of subject 1`);
    notes.push(...this.warnings.slice(0, 2));
    let y = h - 4;
    for (const note of notes.reverse()) {
      y -= 16;
      this.banner(ctx, note, y, "rgba(0,0,0,0.65)", "#ddd");
    }
    if (this.error) {
      this.banner(ctx, `invalid boxes: ${this.error}`, 4, "rgba(120,0,0,0.85)", "#fff");
      this.banner(ctx, "the text is kept; fix it (JSON), pick a preset or Clear", 22, "rgba(120,0,0,0.85)", "#fff");
    }
    if (document.activeElement === this.canvas) {
      ctx.strokeStyle = "rgba(255,255,255,0.5)";
      ctx.lineWidth = 1;
      ctx.strokeRect(0.5, 0.5, w - 1, h - 1);
    }
  }

  tag(ctx, text, x, y, colour, align = "left", maxWidth = Infinity) {
    let shown = text;
    while (shown.length > 1 && ctx.measureText(shown).width + 6 > maxWidth) shown = `${shown.slice(0, -2)}…`;
    const tw = ctx.measureText(shown).width + 6;
    const left = align === "right" ? x - tw : x;
    ctx.fillStyle = colour;
    ctx.fillRect(left, y, tw, 15);
    ctx.fillStyle = "#000";
    ctx.fillText(shown, left + 3, y + 2);
  }

  banner(ctx, text, y, background, colour) {
    ctx.save();
    ctx.font = "11px sans-serif";
    let shown = text;
    while (shown.length > 1 && ctx.measureText(shown).width + 8 > this.cssW) shown = `${shown.slice(0, -2)}…`;
    ctx.fillStyle = background;
    ctx.fillRect(0, y, Math.min(this.cssW, ctx.measureText(shown).width + 8), 15);
    ctx.fillStyle = colour;
    ctx.textBaseline = "top";
    ctx.fillText(shown, 4, y + 2);
    ctx.restore();
  }

  drawHandles(ctx, b, colour) {
    for (const hnd of this.handles(b)) {
      ctx.fillStyle = "#fff";
      ctx.fillRect(hnd.x - HANDLE_SIZE / 2, hnd.y - HANDLE_SIZE / 2, HANDLE_SIZE, HANDLE_SIZE);
      ctx.strokeStyle = colour;
      ctx.lineWidth = 1.5;
      ctx.strokeRect(hnd.x - HANDLE_SIZE / 2, hnd.y - HANDLE_SIZE / 2, HANDLE_SIZE, HANDLE_SIZE);
    }
  }

  rect(b) {
    const x1 = clamp(Math.min(b.x1, b.x2), 0, 1);
    const x2 = clamp(Math.max(b.x1, b.x2), 0, 1);
    const y1 = clamp(Math.min(b.y1, b.y2), 0, 1);
    const y2 = clamp(Math.max(b.y1, b.y2), 0, 1);
    return { x: x1 * this.cssW, y: y1 * this.cssH, w: (x2 - x1) * this.cssW, h: (y2 - y1) * this.cssH };
  }

  handles(b) {
    const r = this.rect(b);
    const xs = { w: r.x, c: r.x + r.w / 2, e: r.x + r.w };
    const ys = { n: r.y, c: r.y + r.h / 2, s: r.y + r.h };
    const out = [];
    for (const v of ["n", "c", "s"]) {
      for (const hz of ["w", "c", "e"]) {
        if (v === "c" && hz === "c") continue;
        const edges = `${v === "c" ? "" : v}${hz === "c" ? "" : hz}`;
        out.push({ edges, x: xs[hz], y: ys[v] });
      }
    }
    return out;
  }

  // ---------------------------------------------------------------- interaction

  /** Pointer position in fractions of the image (works at any canvas zoom). */
  point(e) {
    const r = this.canvas.getBoundingClientRect();
    return {
      fx: clamp((e.clientX - r.left) / r.width, 0, 1),
      fy: clamp((e.clientY - r.top) / r.height, 0, 1),
      cx: ((e.clientX - r.left) / r.width) * this.cssW,
      cy: ((e.clientY - r.top) / r.height) * this.cssH,
    };
  }

  snapX(f) {
    const [W] = this.size();
    return clamp(this.snap ? (Math.round((f * W) / GRID) * GRID) / W : f, 0, 1);
  }

  snapY(f) {
    const [, H] = this.size();
    return clamp(this.snap ? (Math.round((f * H) / GRID) * GRID) / H : f, 0, 1);
  }

  minSize() {
    const [W, H] = this.size();
    return this.snap ? [GRID / W, GRID / H] : [2 / W, 2 / H];
  }

  hitHandle(p) {
    const b = this.boxes[this.selected];
    if (!b) return null;
    for (const hnd of this.handles(b)) {
      if (Math.abs(p.cx - hnd.x) <= HANDLE_HIT && Math.abs(p.cy - hnd.y) <= HANDLE_HIT) return hnd.edges;
    }
    return null;
  }

  hitBox(p) {
    let best = -1;
    for (const [i, b] of this.boxes.entries()) {
      const r = this.rect(b);
      if (p.cx < r.x || p.cx > r.x + r.w || p.cy < r.y || p.cy > r.y + r.h) continue;
      if (best < 0 || area(b) <= area(this.boxes[best])) best = i; // the smallest box under the pointer
    }
    return best;
  }

  onPointerDown(e) {
    if (e.button !== 0) return;
    e.stopPropagation();
    this.canvas.focus({ preventScroll: true });
    if (!this.editable()) return;
    const p = this.point(e);
    const edges = this.hitHandle(p);
    const index = edges ? this.selected : this.hitBox(p);
    if (edges) {
      this.drag = { mode: "resize", edges, index, start: p, origin: { ...this.boxes[index] }, moved: false };
    } else if (index >= 0) {
      this.selected = index;
      this.drag = { mode: "move", index, start: p, origin: { ...this.boxes[index] }, moved: false };
      this.refreshPanel();
    } else {
      this.selected = -1;
      this.refreshPanel();
      if (this.boxes.length >= MAX_BOXES) {
        this.drag = null;
      } else {
        this.drag = { mode: "new", index: -1, start: p, anchor: { x: this.snapX(p.fx), y: this.snapY(p.fy) }, moved: false };
      }
    }
    this.canvas.setPointerCapture?.(e.pointerId);
    this.render();
  }

  onPointerMove(e) {
    const p = this.point(e);
    const d = this.drag;
    if (!d) {
      if (!this.editable()) return;
      const edges = this.hitHandle(p);
      this.canvas.style.cursor = edges ? cursorFor(edges) : this.hitBox(p) >= 0 ? "move" : "crosshair";
      return;
    }
    e.stopPropagation();
    if (!d.moved && Math.hypot(p.cx - d.start.cx, p.cy - d.start.cy) < 3) return;
    d.moved = true;
    const [minW, minH] = this.minSize();
    if (d.mode === "new") {
      const x = this.snapX(p.fx);
      const y = this.snapY(p.fy);
      d.preview = {
        x1: Math.min(d.anchor.x, x), y1: Math.min(d.anchor.y, y), x2: Math.max(d.anchor.x, x), y2: Math.max(d.anchor.y, y), label: "",
      };
    } else if (d.mode === "move") {
      const o = d.origin;
      const bw = o.x2 - o.x1;
      const bh = o.y2 - o.y1;
      let x1 = clamp(this.snapX(o.x1 + p.fx - d.start.fx), 0, Math.max(0, 1 - bw));
      let y1 = clamp(this.snapY(o.y1 + p.fy - d.start.fy), 0, Math.max(0, 1 - bh));
      d.preview = { ...o, x1, y1, x2: x1 + bw, y2: y1 + bh };
    } else {
      const b = { ...d.origin };
      if (d.edges.includes("w")) b.x1 = Math.min(this.snapX(p.fx), b.x2 - minW);
      if (d.edges.includes("e")) b.x2 = Math.max(this.snapX(p.fx), b.x1 + minW);
      if (d.edges.includes("n")) b.y1 = Math.min(this.snapY(p.fy), b.y2 - minH);
      if (d.edges.includes("s")) b.y2 = Math.max(this.snapY(p.fy), b.y1 + minH);
      b.x1 = clamp(b.x1, 0, 1);
      b.y1 = clamp(b.y1, 0, 1);
      b.x2 = clamp(b.x2, 0, 1);
      b.y2 = clamp(b.y2, 0, 1);
      d.preview = b;
    }
    this.render();
  }

  onPointerUp(e, cancelled = false) {
    const d = this.drag;
    this.drag = null;
    this.canvas.releasePointerCapture?.(e.pointerId);
    if (!d) return;
    e.stopPropagation();
    if (cancelled || !d.moved || !d.preview || !this.editable()) {
      this.render();
      return;
    }
    const boxes = this.boxes.slice();
    if (d.mode === "new") {
      const [minW, minH] = this.minSize();
      const b = d.preview;
      if (b.x2 - b.x1 < minW || b.y2 - b.y1 < minH) {
        this.render(); // too small: a click on empty space
        return;
      }
      boxes.push(b);
      this.selected = boxes.length - 1;
    } else {
      boxes[d.index] = d.preview;
    }
    this.commit(boxes);
  }

  onKeyDown(e) {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    let handled = true;
    const b = this.boxes[this.selected];
    if (e.key === "Delete" || e.key === "Backspace") {
      this.deleteSelected();
    } else if (e.key === "Escape") {
      this.select(-1);
    } else if (e.key.startsWith("Arrow") && b && this.editable()) {
      const [W, H] = this.size();
      const step = e.shiftKey || !this.snap ? 1 : GRID;
      const dx = e.key === "ArrowLeft" ? -step / W : e.key === "ArrowRight" ? step / W : 0;
      const dy = e.key === "ArrowUp" ? -step / H : e.key === "ArrowDown" ? step / H : 0;
      const moved = { ...b };
      const sx = clamp(dx, -b.x1, 1 - b.x2);
      const sy = clamp(dy, -b.y1, 1 - b.y2);
      moved.x1 += sx;
      moved.x2 += sx;
      moved.y1 += sy;
      moved.y2 += sy;
      const boxes = this.boxes.slice();
      boxes[this.selected] = moved;
      this.commit(boxes);
    } else {
      handled = false;
    }
    if (handled) {
      // keep the graph's own shortcuts (Delete removes the node) away from the canvas
      e.preventDefault();
      e.stopPropagation();
    }
  }

  // ---------------------------------------------------------------- after a run

  onExecuted(message) {
    const layout = message?.msp_layout?.[0];
    if (typeof layout === "string") {
      const parsed = parseBoxes(layout);
      this.runBoxes = parsed.error ? null : parsed.boxes;
    }
    const entry = message?.images?.[0];
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
      selected: this.selected,
      snap: this.snap,
      size: this.size(),
      canvasCss: [this.cssW, this.cssH],
      runBoxes: this.runBoxes?.map((b) => ({ ...b })) ?? null,
      image: this.image ? [this.imageW, this.imageH] : null,
      boxesHidden: !!this.boxesWidget?.hidden,
    };
  }

  dispose() {
    this.resizeObserver?.disconnect();
  }
}

/** Call onChange after every assignment to widget.value (programmatic sets skip widget callbacks). */
function watchValue(widget, onChange) {
  let owner = widget;
  let descriptor;
  while (owner && !(descriptor = Object.getOwnPropertyDescriptor(owner, "value"))) owner = Object.getPrototypeOf(owner);
  if (!descriptor || (owner === widget && !descriptor.configurable)) return;
  let stored = descriptor.value;
  const get = descriptor.get ? function () { return descriptor.get.call(this); } : () => stored;
  const set = descriptor.get
    ? function (v) { descriptor.set?.call(this, v); }
    : (v) => { stored = v; };
  Object.defineProperty(widget, "value", {
    configurable: true,
    enumerable: true,
    get,
    set(v) {
      const before = get.call(this);
      set.call(this, v);
      if (get.call(this) !== before) onChange(v);
    },
  });
}

function area(b) {
  return Math.abs((b.x2 - b.x1) * (b.y2 - b.y1));
}

function sameGeometry(a, b) {
  if (a.length !== b.length) return false;
  return a.every((box, i) => COORDS.every((c) => Math.abs(box[c] - b[i][c]) < 1e-4));
}

function cursorFor(edges) {
  if (edges === "nw" || edges === "se") return "nwse-resize";
  if (edges === "ne" || edges === "sw") return "nesw-resize";
  return edges === "n" || edges === "s" ? "ns-resize" : "ew-resize";
}

app.registerExtension({
  name: "comfyui-multisubject.LayoutBoxCanvas",

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE_ID) return;

    chainCallback(nodeType.prototype, "onNodeCreated", function () {
      this.mspLayout = new LayoutCanvas(this);
      this.setSize([Math.max(this.size[0], 460), Math.max(this.size[1], 640)]);
    });

    chainCallback(nodeType.prototype, "onConfigure", function () {
      const editor = this.mspLayout;
      if (!editor) return;
      // A workflow saved with a preset: its boxes become the drawn boxes (same result when run).
      const preset = editor.presetWidget?.value;
      if (preset && preset !== CUSTOM && preset in PRESETS && !editor.isLinked("preset")) {
        editor.sync(true);
        editor.applyPreset(preset, { track: false });
        editor.presetWidget.value = CUSTOM;
      }
      editor.sync(true);
    });

    chainCallback(nodeType.prototype, "onExecuted", function (message) {
      this.mspLayout?.onExecuted(message);
    });

    chainCallback(nodeType.prototype, "onConnectionsChange", function () {
      this.mspLayout?.refreshPanel();
      this.mspLayout?.render();
    });

    chainCallback(nodeType.prototype, "onRemoved", function () {
      this.mspLayout?.dispose();
    });

    // The IMAGE is shown behind the boxes; no separate preview below the canvas.
    nodeType.prototype.onDrawBackground = function () {};
  },

  loadedGraphNode(node) {
    node.mspLayout?.sync(true);
  },
});
