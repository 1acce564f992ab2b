// The boxes of "Draw Layout Box" as data: constants shared with the backend, the STRING's
// parse / canonical serialization, label capping, presets and box geometry. No DOM, no app.
//
// Everything here treats its input as hostile (it comes from saved workflows): bounded work per
// box, at most MAX_BOXES boxes, labels capped at the backend's cap, no prototype lookups by name.

export const GRID = 8; // SDXL latent grid, in image pixels
export const MAX_BOXES = 32; // attention_patches/layout.py MAX_BOXES
export const MAX_LABEL = 200; // attention_patches/layout.py MAX_LABEL_LENGTH (code points)
export const CUSTOM = "custom";
export const COORDS = ["x1", "y1", "x2", "y2"];

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

/** A preset's name (own key only: "constructor" or "__proto__" from a workflow are no presets). */
export const isPreset = (name) => typeof name === "string" && Object.hasOwn(PRESETS, name);

export const colourOf = (i) => PALETTE[i % PALETTE.length];
export const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));
const round4 = (v) => {
  const r = Math.round(v * 1e4) / 1e4;
  return r === 0 ? 0 : r; // no -0
};

/**
 * The label as the backend keeps it when it is too long: stripped, then its first MAX_LABEL code
 * points (never half a surrogate pair). Reads at most MAX_LABEL code points of a long string.
 */
export function capLabel(label) {
  if (label.length <= MAX_LABEL) return label; // UTF-16 units >= code points
  const text = label.trim();
  let end = 0;
  for (let points = 0; points < MAX_LABEL && end < text.length; points += 1) {
    end += text.codePointAt(end) > 0xffff ? 2 : 1;
  }
  return text.slice(0, end);
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

/**
 * The boxes of the STRING, as the backend reads them (its accepted forms), without throwing.
 * `capped` says a label was longer than the backend keeps (the STRING should be rewritten).
 */
export function parseBoxes(text) {
  const result = { boxes: [], error: null, warnings: [], capped: false };
  if (typeof text !== "string" || !text.trim()) return result;
  let data;
  try {
    data = JSON.parse(text);
  } catch (e) {
    result.error = `the boxes are not valid JSON (${String(e.message || e).slice(0, 80)})`;
    return result;
  }
  if (data && typeof data === "object" && !Array.isArray(data) && Object.hasOwn(data, "boxes")) data = data.boxes;
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
      values = COORDS.map((c) => (Object.hasOwn(item, c) ? item[c] : undefined));
      const raw = Object.hasOwn(item, "label") ? item.label : null;
      if (raw !== undefined && raw !== null) {
        if (typeof raw !== "string") {
          result.error = `box ${i + 1}: the label must be text`;
          return result;
        }
        label = capLabel(raw);
        if (label !== raw) result.capped = true;
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

/** The preset's boxes, keeping the labels of `previous` in order. */
export function presetBoxes(name, previous = []) {
  if (!isPreset(name)) return null;
  return PRESETS[name].map(([x1, y1, x2, y2], i) => ({ x1, y1, x2, y2, label: previous[i]?.label ?? "" }));
}

/**
 * Where the "add box" control puts a new box: a third of the image, centred, moved down-right
 * in grid steps while it would sit exactly on an existing box (so it is always visible).
 */
export function placeNewBox(boxes, [W, H]) {
  const step = [GRID / W, GRID / H].map((s) => Math.max(s, 1 / 32));
  let x1 = Math.round(W / 3 / GRID) * GRID / W;
  let y1 = Math.round(H / 3 / GRID) * GRID / H;
  const w = Math.max(GRID / W, Math.round(W / 3 / GRID) * GRID / W);
  const h = Math.max(GRID / H, Math.round(H / 3 / GRID) * GRID / H);
  for (let tries = 0; tries < MAX_BOXES && boxes.some((b) => sameBox(b, { x1, y1 })); tries += 1) {
    x1 = Math.min(1 - w, x1 + step[0]);
    y1 = Math.min(1 - h, y1 + step[1]);
  }
  return { x1: round4(x1), y1: round4(y1), x2: round4(x1 + w), y2: round4(y1 + h), label: "" };
}

const sameBox = (a, b) => Math.abs(a.x1 - b.x1) < 1e-4 && Math.abs(a.y1 - b.y1) < 1e-4;

export function area(b) {
  return Math.abs((b.x2 - b.x1) * (b.y2 - b.y1));
}

export function sameGeometry(a, b) {
  if (a.length !== b.length) return false;
  return a.every((box, i) => COORDS.every((c) => Math.abs(box[c] - b[i][c]) < 1e-4));
}

/** The box as a rectangle of a w x h drawing (clamped to the image, any corner order). */
export function boxRect(b, w, h) {
  const x1 = clamp(Math.min(b.x1, b.x2), 0, 1);
  const x2 = clamp(Math.max(b.x1, b.x2), 0, 1);
  const y1 = clamp(Math.min(b.y1, b.y2), 0, 1);
  const y2 = clamp(Math.max(b.y1, b.y2), 0, 1);
  return { x: x1 * w, y: y1 * h, w: (x2 - x1) * w, h: (y2 - y1) * h };
}

/** The eight resize handles of a box: the edges they move ("n", "se", ...) and where they are. */
export function boxHandles(b, w, h) {
  const r = boxRect(b, w, h);
  const xs = { w: r.x, c: r.x + r.w / 2, e: r.x + r.w };
  const ys = { n: r.y, c: r.y + r.h / 2, s: r.y + r.h };
  const out = [];
  for (const v of ["n", "c", "s"]) {
    for (const hz of ["w", "c", "e"]) {
      if (v === "c" && hz === "c") continue;
      out.push({ edges: `${v === "c" ? "" : v}${hz === "c" ? "" : hz}`, x: xs[hz], y: ys[v] });
    }
  }
  return out;
}
