"""The examples' reference images: simple drawings made here, shipped in example_workflows/input/.

Every Load Image of every example names a picture (``dog.png``, ``man.png``, ...); the pack copies
these drawings into ComfyUI's ``input/`` folder at start when a file of that name is not there yet,
so an example opens with its pictures instead of "Image failed to load". They are stylised shapes
on a plain background (no photos), a few KB each, and only stand in until the artist loads their
own photos. A name with no drawing of its own gets a labelled placeholder. Run again after adding
an example with a new image name:

    .venv/bin/python scripts/make_reference_images.py            # writes example_workflows/input/*.png
    .venv/bin/python scripts/make_reference_images.py --out DIR  # writes them elsewhere (tests compare)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "example_workflows"
IMAGES = EXAMPLES / "input"
SIZE = 256
SKY, GRASS, WHITE, INK = (205, 225, 245), (150, 200, 120), (250, 250, 246), (40, 40, 40)

log = logging.getLogger("make_reference_images")


def dog(draw: ImageDraw.ImageDraw, x: int = 128, fur=(150, 100, 60)) -> None:
    draw.ellipse((x - 70, 120, x + 50, 190), fill=fur)  # body
    for leg in (x - 55, x - 30, x + 10, x + 30):
        draw.rectangle((leg, 175, leg + 14, 225), fill=fur)
    draw.line((x - 68, 140, x - 95, 110), fill=fur, width=10)  # tail
    draw.ellipse((x + 20, 70, x + 90, 135), fill=fur)  # head
    draw.ellipse((x + 15, 75, x + 40, 130), fill=(110, 70, 40))  # ear
    draw.ellipse((x + 70, 95, x + 80, 105), fill=INK)  # eye
    draw.ellipse((x + 84, 112, x + 96, 122), fill=INK)  # nose


def cat(draw: ImageDraw.ImageDraw, fur=(230, 140, 40)) -> None:
    draw.ellipse((70, 130, 190, 230), fill=fur)  # body
    draw.line((180, 210, 225, 150), fill=fur, width=12)  # tail
    draw.ellipse((85, 60, 175, 145), fill=fur)  # head
    draw.polygon([(90, 85), (100, 40), (125, 70)], fill=fur)
    draw.polygon([(170, 85), (160, 40), (135, 70)], fill=fur)
    for eye in (108, 142):
        draw.ellipse((eye - 7, 90, eye + 7, 104), fill=(60, 140, 60))
    for side in (-1, 1):
        for dy in (-6, 4):
            draw.line((130 + side * 12, 118, 130 + side * 45, 118 + dy), fill=INK, width=2)


def teddy_bear(draw: ImageDraw.ImageDraw, fur=(170, 120, 70)) -> None:
    for ear in (85, 171):
        draw.ellipse((ear - 22, 40, ear + 22, 84), fill=fur)
    draw.ellipse((78, 50, 178, 145), fill=fur)  # head
    draw.ellipse((70, 130, 186, 235), fill=fur)  # body
    draw.ellipse((105, 150, 151, 210), fill=(215, 180, 130))  # tummy
    draw.ellipse((110, 100, 146, 130), fill=(215, 180, 130))  # muzzle
    for eye in (108, 148):
        draw.ellipse((eye - 6, 82, eye + 6, 94), fill=INK)
    draw.ellipse((121, 104, 135, 114), fill=INK)


def person(draw: ImageDraw.ImageDraw, x: int = 128, shirt=(70, 110, 190), hair=(70, 45, 30), long_hair: bool = False) -> None:
    if long_hair:
        draw.rectangle((x - 34, 50, x + 34, 120), fill=hair)
    draw.ellipse((x - 30, 30, x + 30, 95), fill=(235, 195, 160))  # face
    draw.chord((x - 32, 24, x + 32, 80), 180, 360, fill=hair)  # hair
    draw.polygon([(x - 55, 250), (x - 45, 115), (x + 45, 115), (x + 55, 250)] if long_hair else
                 [(x - 50, 250), (x - 50, 115), (x + 50, 115), (x + 50, 250)], fill=shirt)
    for eye in (x - 12, x + 12):
        draw.ellipse((eye - 4, 58, eye + 4, 66), fill=INK)
    draw.arc((x - 12, 66, x + 12, 84), 20, 160, fill=INK, width=2)


def man(draw: ImageDraw.ImageDraw) -> None:
    person(draw)


def woman(draw: ImageDraw.ImageDraw) -> None:
    person(draw, shirt=(190, 70, 110), hair=(120, 60, 30), long_hair=True)


def man_and_dog(draw: ImageDraw.ImageDraw) -> None:
    person(draw, x=70)
    dog(draw, x=160, fur=(120, 90, 60))


def beach(draw: ImageDraw.ImageDraw) -> None:
    draw.rectangle((0, 110, SIZE, 170), fill=(60, 130, 200))  # sea
    draw.rectangle((0, 170, SIZE, SIZE), fill=(235, 215, 160))  # sand
    draw.ellipse((180, 20, 230, 70), fill=(250, 210, 60))  # sun
    draw.line((60, 230, 75, 120), fill=(120, 80, 40), width=8)  # palm
    draw.ellipse((35, 95, 115, 135), fill=(60, 150, 70))


def canny_source(draw: ImageDraw.ImageDraw) -> None:
    """Two clear shapes, left and right, for the Canny node to trace (the subjects' places)."""
    draw.rectangle((0, 0, SIZE, SIZE), fill=WHITE)
    draw.rectangle((30, 80, 110, 210), outline=INK, width=5)
    draw.ellipse((145, 80, 225, 210), outline=INK, width=5)


def hat(draw: ImageDraw.ImageDraw, felt=(60, 60, 90)) -> None:
    draw.ellipse((40, 150, 216, 190), fill=felt)  # brim
    draw.rectangle((80, 70, 176, 170), fill=felt)
    draw.rectangle((80, 135, 176, 152), fill=(180, 50, 50))  # band


DRAWINGS = {"dog": dog, "cat": cat, "teddy_bear": teddy_bear, "man": man, "woman": woman, "man_and_dog": man_and_dog,
            "beach": beach, "canny_source": canny_source, "hat": hat, "person": man}
BACKGROUNDS = {"beach": SKY, "canny_source": WHITE}


def placeholder(draw: ImageDraw.ImageDraw, name: str) -> None:
    """For an image name with no drawing: a shape and the name, so the example still opens with a picture."""
    draw.rounded_rectangle((48, 48, 208, 208), radius=24, fill=(120, 140, 190))
    draw.text((60, 120), name[:24], fill=WHITE)


def example_image_names(examples: Path = EXAMPLES) -> list[str]:
    """Every image a Load Image of an example names."""
    names = set()
    for path in sorted(examples.glob("*.json")):
        for node in json.loads(path.read_text())["nodes"]:
            if node["type"] == "LoadImage" and node.get("widgets_values"):
                names.add(node["widgets_values"][0])
    return sorted(names)


def draw_image(name: str) -> Image.Image:
    stem = Path(name).stem
    image = Image.new("RGB", (SIZE, SIZE), BACKGROUNDS.get(stem, SKY))
    draw = ImageDraw.Draw(image)
    if stem not in BACKGROUNDS:
        draw.rectangle((0, 200, SIZE, SIZE), fill=GRASS)
    DRAWINGS.get(stem, lambda d: placeholder(d, stem))(draw)
    return image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=IMAGES, help="where the images go (default: example_workflows/input)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    for name in example_image_names():
        draw_image(name).save(args.out / name, optimize=True)
        log.info("%s (%d bytes)", args.out / name, (args.out / name).stat().st_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
