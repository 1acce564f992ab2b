// Pointer and keyboard editing on the layout canvas: draw (also over boxes with Shift), move,
// resize by handles, nudge with the arrows, delete. Writes through the editor's commit().

import { area, boxHandles, boxRect, clamp, COORDS, GRID, MAX_BOXES } from "./layout_boxes.js";

const HANDLE_HIT = 7; // canvas CSS px

export const CANVAS_HELP = "drag on empty space: new box · Shift+drag: new box anywhere (also over boxes) · "
  + "drag a box: move · drag a handle: resize · arrows: nudge · Delete: remove";

export class CanvasInteraction {
  constructor(editor) {
    this.editor = editor;
    this.drag = null; // {mode: "new" | "move" | "resize", index, start, preview, ...} while a pointer edits
    const canvas = editor.canvas;
    canvas.addEventListener("pointerdown", (e) => this.onPointerDown(e));
    canvas.addEventListener("pointermove", (e) => this.onPointerMove(e));
    canvas.addEventListener("pointerup", (e) => this.onPointerUp(e));
    canvas.addEventListener("pointercancel", (e) => this.onPointerUp(e, true));
    canvas.addEventListener("keydown", (e) => this.onKeyDown(e));
  }

  /** Pointer position in fractions of the image (works at any canvas zoom). */
  point(e) {
    const r = this.editor.canvas.getBoundingClientRect();
    return {
      fx: clamp((e.clientX - r.left) / r.width, 0, 1),
      fy: clamp((e.clientY - r.top) / r.height, 0, 1),
      cx: ((e.clientX - r.left) / r.width) * this.editor.cssW,
      cy: ((e.clientY - r.top) / r.height) * this.editor.cssH,
    };
  }

  snapX(f) {
    const [W] = this.editor.size();
    return clamp(this.editor.snap ? (Math.round((f * W) / GRID) * GRID) / W : f, 0, 1);
  }

  snapY(f) {
    const [, H] = this.editor.size();
    return clamp(this.editor.snap ? (Math.round((f * H) / GRID) * GRID) / H : f, 0, 1);
  }

  minSize() {
    const [W, H] = this.editor.size();
    return this.editor.snap ? [GRID / W, GRID / H] : [2 / W, 2 / H];
  }

  hitHandle(p) {
    const b = this.editor.boxes[this.editor.selected];
    if (!b) return null;
    for (const hnd of boxHandles(b, this.editor.cssW, this.editor.cssH)) {
      if (Math.abs(p.cx - hnd.x) <= HANDLE_HIT && Math.abs(p.cy - hnd.y) <= HANDLE_HIT) return hnd.edges;
    }
    return null;
  }

  hitBox(p) {
    let best = -1;
    for (const [i, b] of this.editor.boxes.entries()) {
      const r = boxRect(b, this.editor.cssW, this.editor.cssH);
      if (p.cx < r.x || p.cx > r.x + r.w || p.cy < r.y || p.cy > r.y + r.h) continue;
      if (best < 0 || area(b) <= area(this.editor.boxes[best])) best = i; // the smallest box under the pointer
    }
    return best;
  }

  onPointerDown(e) {
    if (e.button !== 0) return;
    e.stopPropagation();
    this.editor.canvas.focus({ preventScroll: true });
    if (!this.editor.editable()) return;
    const p = this.point(e);
    const edges = e.shiftKey ? null : this.hitHandle(p);
    const index = e.shiftKey ? -1 : edges ? this.editor.selected : this.hitBox(p);
    if (edges) {
      this.drag = { mode: "resize", edges, index, start: p, origin: { ...this.editor.boxes[index] }, moved: false };
    } else if (index >= 0) {
      this.editor.selected = index;
      this.drag = { mode: "move", index, start: p, origin: { ...this.editor.boxes[index] }, moved: false };
      this.editor.refreshPanel();
    } else {
      // empty space, or Shift held: a new box (boxes may cover the whole image)
      this.editor.selected = -1;
      this.editor.refreshPanel();
      const room = this.editor.boxes.length < MAX_BOXES;
      this.drag = room ? { mode: "new", index: -1, start: p, anchor: { x: this.snapX(p.fx), y: this.snapY(p.fy) }, moved: false } : null;
    }
    this.editor.canvas.setPointerCapture?.(e.pointerId);
    this.editor.render();
  }

  onPointerMove(e) {
    const p = this.point(e);
    const d = this.drag;
    if (!d) {
      if (!this.editor.editable()) return;
      const edges = e.shiftKey ? null : this.hitHandle(p);
      this.editor.canvas.style.cursor = edges ? cursorFor(edges) : !e.shiftKey && this.hitBox(p) >= 0 ? "move" : "crosshair";
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
      const x1 = clamp(this.snapX(o.x1 + p.fx - d.start.fx), 0, Math.max(0, 1 - bw));
      const y1 = clamp(this.snapY(o.y1 + p.fy - d.start.fy), 0, Math.max(0, 1 - bh));
      d.preview = { ...o, x1, y1, x2: x1 + bw, y2: y1 + bh };
    } else {
      const b = { ...d.origin };
      if (d.edges.includes("w")) b.x1 = Math.min(this.snapX(p.fx), b.x2 - minW);
      if (d.edges.includes("e")) b.x2 = Math.max(this.snapX(p.fx), b.x1 + minW);
      if (d.edges.includes("n")) b.y1 = Math.min(this.snapY(p.fy), b.y2 - minH);
      if (d.edges.includes("s")) b.y2 = Math.max(this.snapY(p.fy), b.y1 + minH);
      for (const c of COORDS) b[c] = clamp(b[c], 0, 1);
      d.preview = b;
    }
    this.editor.render();
  }

  onPointerUp(e, cancelled = false) {
    const d = this.drag;
    this.drag = null;
    this.editor.canvas.releasePointerCapture?.(e.pointerId);
    if (!d) return;
    e.stopPropagation();
    if (cancelled || !d.moved || !d.preview || !this.editor.editable()) {
      this.editor.render();
      return;
    }
    const boxes = this.editor.boxes.slice();
    if (d.mode === "new") {
      const [minW, minH] = this.minSize();
      const b = d.preview;
      if (b.x2 - b.x1 < minW || b.y2 - b.y1 < minH) {
        this.editor.render(); // too small: a click on empty space
        return;
      }
      boxes.push(b);
      this.editor.selected = boxes.length - 1;
    } else {
      boxes[d.index] = d.preview;
    }
    this.editor.commit(boxes);
  }

  onKeyDown(e) {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    let handled = true;
    const b = this.editor.boxes[this.editor.selected];
    if (e.key === "Delete" || e.key === "Backspace") {
      this.editor.deleteSelected();
    } else if (e.key === "Escape") {
      this.editor.select(-1);
    } else if (e.key.startsWith("Arrow") && b && this.editor.editable()) {
      const [W, H] = this.editor.size();
      const step = e.shiftKey || !this.editor.snap ? 1 : GRID;
      const dx = e.key === "ArrowLeft" ? -step / W : e.key === "ArrowRight" ? step / W : 0;
      const dy = e.key === "ArrowUp" ? -step / H : e.key === "ArrowDown" ? step / H : 0;
      const sx = clamp(dx, -b.x1, 1 - b.x2);
      const sy = clamp(dy, -b.y1, 1 - b.y2);
      const boxes = this.editor.boxes.slice();
      boxes[this.editor.selected] = { ...b, x1: b.x1 + sx, x2: b.x2 + sx, y1: b.y1 + sy, y2: b.y2 + sy };
      this.editor.commit(boxes);
    } else {
      handled = false;
    }
    if (handled) {
      // keep the graph's own shortcuts (Delete removes the node) away from the canvas
      e.preventDefault();
      e.stopPropagation();
    }
  }
}

function cursorFor(edges) {
  if (edges === "nw" || edges === "se") return "nwse-resize";
  if (edges === "ne" || edges === "sw") return "nesw-resize";
  return edges === "n" || edges === "s" ? "ns-resize" : "ew-resize";
}
