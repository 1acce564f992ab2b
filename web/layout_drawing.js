// Drawing the layout on a 2D canvas: image, boxes, tags, handles, notes. Text only through
// fillText, and shortened to fit with bounded work whatever its length (hostile labels).

import { area, boxHandles, boxRect, colourOf, sameGeometry } from "./layout_boxes.js";

const HANDLE_SIZE = 7;
const ELLIPSIS = "…";
// no glyph of these fonts is narrower than this (CSS px): a text longer than width / MIN_GLYPH
// characters cannot fit, so only that prefix is ever measured
const MIN_GLYPH = 0.5;

function rgba(hex, alpha) {
  const n = parseInt(hex.slice(1), 16);
  return `rgba(${(n >> 16) & 255}, ${(n >> 8) & 255}, ${n & 255}, ${alpha})`;
}

/** `text` shortened with "…" to at most `maxWidth`: O(log n) measurements of a bounded prefix. */
export function fitText(ctx, text, maxWidth) {
  if (!(maxWidth > 0)) return "";
  const bound = Math.ceil(maxWidth / MIN_GLYPH) + 1;
  const candidate = text.length > bound ? text.slice(0, bound) : text;
  if (candidate === text && ctx.measureText(text).width <= maxWidth) return text;
  let lo = 0; // longest prefix known to fit (with the ellipsis)
  let hi = candidate.length; // shortest prefix known not to fit
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (ctx.measureText(prefix(candidate, mid) + ELLIPSIS).width <= maxWidth) lo = mid;
    else hi = mid;
  }
  return prefix(candidate, lo) + ELLIPSIS;
}

/** The first n UTF-16 units, never ending in half a surrogate pair. */
function prefix(text, n) {
  const code = text.charCodeAt(n - 1);
  return text.slice(0, code >= 0xd800 && code <= 0xdbff ? n - 1 : n);
}

function tag(ctx, text, x, y, colour, align = "left", maxWidth = Infinity) {
  const shown = fitText(ctx, text, maxWidth - 6);
  const tw = ctx.measureText(shown).width + 6;
  const left = align === "right" ? x - tw : x;
  ctx.fillStyle = colour;
  ctx.fillRect(left, y, tw, 15);
  ctx.fillStyle = "#000";
  ctx.fillText(shown, left + 3, y + 2);
}

function banner(ctx, text, y, width, background, colour) {
  ctx.save();
  ctx.font = "11px sans-serif";
  ctx.textBaseline = "top";
  const shown = fitText(ctx, text, width - 8);
  ctx.fillStyle = background;
  ctx.fillRect(0, y, Math.min(width, ctx.measureText(shown).width + 8), 15);
  ctx.fillStyle = colour;
  ctx.fillText(shown, 4, y + 2);
  ctx.restore();
}

function drawHandles(ctx, b, w, h, colour) {
  for (const hnd of boxHandles(b, w, h)) {
    ctx.fillStyle = "#fff";
    ctx.fillRect(hnd.x - HANDLE_SIZE / 2, hnd.y - HANDLE_SIZE / 2, HANDLE_SIZE, HANDLE_SIZE);
    ctx.strokeStyle = colour;
    ctx.lineWidth = 1.5;
    ctx.strokeRect(hnd.x - HANDLE_SIZE / 2, hnd.y - HANDLE_SIZE / 2, HANDLE_SIZE, HANDLE_SIZE);
  }
}

function drawBackground(ctx, w, h, image) {
  ctx.clearRect(0, 0, w, h);
  ctx.fillStyle = "#1b1b1b";
  ctx.fillRect(0, 0, w, h);
  if (image) ctx.drawImage(image, 0, 0, w, h);
  ctx.strokeStyle = "rgba(255,255,255,0.08)"; // quarter lines
  ctx.lineWidth = 1;
  ctx.beginPath();
  for (const f of [0.25, 0.5, 0.75]) {
    ctx.moveTo(Math.round(f * w) + 0.5, 0);
    ctx.lineTo(Math.round(f * w) + 0.5, h);
    ctx.moveTo(0, Math.round(f * h) + 0.5);
    ctx.lineTo(w, Math.round(f * h) + 0.5);
  }
  ctx.stroke();
}

/**
 * Draw the scene on `ctx` (already scaled to CSS px) and return what was drawn, per box in order
 * (the browser tests read it). scene: {w, h, image, boxes, selected, drag, runBoxes, error,
 * notes, focused}; drag: {mode, index, preview} while a pointer edit is under way.
 */
export function drawScene(ctx, scene) {
  const { w, h, boxes, selected, drag } = scene;
  drawBackground(ctx, w, h, scene.image);
  ctx.font = "bold 12px sans-serif";
  ctx.textBaseline = "top";

  if (scene.runBoxes && !sameGeometry(scene.runBoxes, boxes)) {
    ctx.save();
    ctx.setLineDash([6, 4]);
    ctx.lineWidth = 2;
    for (const [i, b] of scene.runBoxes.entries()) {
      const r = boxRect(b, w, h);
      ctx.strokeStyle = colourOf(i);
      ctx.strokeRect(r.x + 1, r.y + 1, r.w - 2, r.h - 2);
      tag(ctx, `${i + 1}`, r.x + r.w - 4, r.y + r.h - 18, colourOf(i), "right");
    }
    ctx.restore();
  }

  const rendered = [];
  if (!scene.error) {
    // big boxes first, so small ones stay visible and clickable on top
    const order = boxes.map((b, i) => i).sort((a, b) => area(boxes[b]) - area(boxes[a]) || a - b);
    for (const i of order) {
      const b = drag?.index === i && drag.preview ? drag.preview : boxes[i];
      const r = boxRect(b, w, h);
      const colour = colourOf(i);
      const isSelected = i === selected;
      ctx.fillStyle = rgba(colour, isSelected ? 0.3 : 0.16);
      ctx.fillRect(r.x, r.y, r.w, r.h);
      const lw = isSelected ? 3 : 2;
      ctx.strokeStyle = "rgba(0,0,0,0.6)"; // dark under-stroke: visible on any background image
      ctx.lineWidth = lw + 2;
      ctx.strokeRect(r.x + lw / 2, r.y + lw / 2, r.w - lw, r.h - lw);
      ctx.strokeStyle = colour;
      ctx.lineWidth = lw;
      ctx.strokeRect(r.x + lw / 2, r.y + lw / 2, r.w - lw, r.h - lw);
      tag(ctx, b.label ? `${i + 1} ${b.label}` : `${i + 1}`, r.x + 3, r.y + 3, colour, "left", r.w - 6);
      rendered.push({ index: i, colour, x1: b.x1, y1: b.y1, x2: b.x2, y2: b.y2, label: b.label });
      if (isSelected) drawHandles(ctx, b, w, h, colour);
    }
    rendered.sort((a, b) => a.index - b.index);
    if (drag?.mode === "new" && drag.preview) {
      const r = boxRect(drag.preview, w, h);
      ctx.setLineDash([4, 3]);
      ctx.strokeStyle = colourOf(boxes.length);
      ctx.lineWidth = 2;
      ctx.strokeRect(r.x, r.y, r.w, r.h);
      ctx.setLineDash([]);
    }
  }

  let y = h - 4;
  for (const note of scene.notes.slice().reverse()) {
    y -= 16;
    banner(ctx, note, y, w, "rgba(0,0,0,0.65)", "#ddd");
  }
  if (scene.error) {
    banner(ctx, `invalid boxes: ${scene.error}`, 4, w, "rgba(120,0,0,0.85)", "#fff");
    banner(ctx, "the text is kept; fix it (JSON), pick a preset or Clear", 22, w, "rgba(120,0,0,0.85)", "#fff");
  }
  if (scene.focused) {
    ctx.strokeStyle = "rgba(255,255,255,0.5)";
    ctx.lineWidth = 1;
    ctx.strokeRect(0.5, 0.5, w - 1, h - 1);
  }
  return rendered;
}
