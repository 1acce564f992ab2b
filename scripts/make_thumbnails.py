"""Thumbnails for ComfyUI's template browser: example_workflows/<name>.jpg, drawn from each example.

The template browser shows ``example_workflows/<name>.jpg`` for a pack's example (only that name
and suffix). Each thumbnail is drawn from the workflow itself: the title of its note, its layout
(the Draw Layout Box boxes at the example's aspect ratio, in the subjects' colours, labelled with
their phrases) and what it combines. Run again after changing an example:

    .venv/bin/python -m scripts.make_thumbnails            # rewrites example_workflows/*.jpg
    .venv/bin/python -m scripts.make_thumbnails --out DIR  # writes them elsewhere (tests compare)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from devkit.pack import bare_module

ROOT = Path(__file__).resolve().parent.parent
_layout = bare_module("attention_patches.layout")
Layout, LayoutBox, make_layout = _layout.Layout, _layout.LayoutBox, _layout.make_layout
colour = bare_module("attention_patches.route_preview").colour

EXAMPLES = ROOT / "example_workflows"
SIZE = 400  # square: the template browser crops its cards to squares
MARGIN = 20
BACKGROUND, CANVAS, TEXT, MUTED = (24, 26, 32), (58, 62, 72), (240, 240, 240), (170, 176, 190)
FEATURES = (  # node type (or Apply input) -> what the thumbnail says the example combines
    ("LoraLoader", "LoRA"),
    ("ControlNetApplyAdvanced", "ControlNet"),
    ("LatentUpscaleBy", "hires fix"),
    ("auto_routing", "auto routing"),
    ("subject_scales", "per-subject strength"),
    ("MSP_RouterMaskPreview", "route preview"),
)
JPEG_QUALITY = 85
# Apply's widgets in the order a saved workflow stores them (required inputs first, then optional ones)
APPLY_WIDGETS = ("scale", "start_percent", "end_percent", "drop_grounding", "subject_scales", "auto_routing")


def note_title(workflow: dict) -> str:
    """The first heading of the example's note ("## Two subjects side by side" -> the words)."""
    for node in workflow["nodes"]:
        if node["type"] in ("MarkdownNote", "Note"):
            match = re.search(r"^#+\s*(.+)$", str(node["widgets_values"][0]), re.MULTILINE)
            if match:
                return match.group(1).strip()
    return ""


def features(workflow: dict) -> list[str]:
    types = {node["type"] for node in workflow["nodes"]}
    layout = ["whole image, no layout"] if "MSP_DrawLayoutBox" not in types else []
    apply = next(n for n in workflow["nodes"] if n["type"] == "MSP_ApplyMultiSubjectAttention")
    values = dict(zip(APPLY_WIDGETS, apply["widgets_values"]))
    settings = {"subject_scales": bool(str(values["subject_scales"]).strip()), "auto_routing": bool(values["auto_routing"])}
    return layout + [text for key, text in FEATURES if key in types or settings.get(key)]


def wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        candidate = f"{line} {word}".strip()
        if line and draw.textlength(candidate, font=font) > width:
            lines.append(line)
            line = word
        else:
            line = candidate
    return lines + ([line] if line else [])


def example_layout(workflow: dict) -> Layout:
    """The example's layout; without a Draw Layout Box, every subject on the whole image (as such a kind routes)."""
    box_node = next((n for n in workflow["nodes"] if n["type"] == "MSP_DrawLayoutBox"), None)
    if box_node is not None:
        return make_layout(*box_node["widgets_values"][:4])
    phrases = [n["widgets_values"][0] for n in workflow["nodes"] if n["type"] == "MSP_EncodeReference"]
    width, height = next(n["widgets_values"][:2] for n in workflow["nodes"] if n["type"] == "EmptyLatentImage")
    return Layout(tuple(LayoutBox(0.0, 0.0, 1.0, 1.0, phrase) for phrase in phrases), width, height)


def thumbnail(workflow: dict) -> Image.Image:
    layout = example_layout(workflow)
    width, height = layout.width, layout.height
    image = Image.new("RGB", (SIZE, SIZE), BACKGROUND)
    draw = ImageDraw.Draw(image)
    title_font, label_font, small_font = (ImageFont.load_default(size=s) for s in (26, 18, 15))
    top = MARGIN
    for line in wrap(draw, note_title(workflow), title_font, SIZE - 2 * MARGIN)[:3]:
        draw.text((MARGIN, top), line, fill=TEXT, font=title_font)
        top += 32
    footer = " · ".join([f"{len(layout.boxes)} subject{'s' if len(layout.boxes) > 1 else ''}", f"{width}x{height}",
                         *features(workflow)])
    footer_lines = wrap(draw, footer, small_font, SIZE - 2 * MARGIN)[:2]
    bottom = SIZE - MARGIN - 20 * len(footer_lines)
    for i, line in enumerate(footer_lines):
        draw.text((MARGIN, bottom + 20 * i + 4), line, fill=MUTED, font=small_font)
    room_w, room_h = SIZE - 2 * MARGIN, bottom - top - 2 * 8
    scale = min(room_w / width, room_h / height)
    canvas_w, canvas_h = round(width * scale), round(height * scale)
    left, upper = (SIZE - canvas_w) // 2, top + 8 + (room_h - canvas_h) // 2
    draw.rectangle((left, upper, left + canvas_w - 1, upper + canvas_h - 1), fill=CANVAS)
    overlay = Image.new("RGBA", image.size, (0, 0, 0, 0))
    shade = ImageDraw.Draw(overlay)
    by_area = sorted(enumerate(layout.boxes), key=lambda item: -(item[1].x2 - item[1].x1) * (item[1].y2 - item[1].y1))
    for s, box in by_area:  # a scene box under its subjects
        x1, y1 = left + box.x1 * canvas_w, upper + box.y1 * canvas_h
        x2, y2 = left + box.x2 * canvas_w - 1, upper + box.y2 * canvas_h - 1
        shade.rectangle((x1, y1, x2, y2), fill=(*colour(s), 70), outline=(*colour(s), 255), width=3)
    image.paste(Image.alpha_composite(image.convert("RGBA"), overlay).convert("RGB"))
    draw = ImageDraw.Draw(image)
    stacked = {}  # labels of boxes with the same corner (the whole image) one under the other
    for s, box in by_area:
        text = f"{s + 1} {box.label}".strip()
        corner = (box.x1, box.y1)
        x, y = left + box.x1 * canvas_w + 6, upper + box.y1 * canvas_h + 5 + 26 * stacked.get(corner, 0)
        stacked[corner] = stacked.get(corner, 0) + 1
        tw = draw.textlength(text, font=label_font)
        draw.rectangle((x - 3, y - 2, x + tw + 3, y + 21), fill=colour(s))
        draw.text((x, y), text, fill=(0, 0, 0), font=label_font)
    return image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=EXAMPLES, help="folder for the .jpg files (default: example_workflows)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for path in sorted(EXAMPLES.glob("*.json")):
        thumbnail(json.loads(path.read_text())).save(args.out / f"{path.stem}.jpg", quality=JPEG_QUALITY, optimize=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
