"""Router Mask Preview: see where each subject was routed, and reuse the routes as masks."""

import logging
import math

import torch

from comfy_api.latest import io, ui

from ..attention_patches.dit.attention_share import shares_by_step_range
from ..attention_patches.route_preview import LATENT_SCALE, layer_words, render
from ..models.safe_text import printable
from .types import CATEGORY, SEARCHABLE, RoutesSocket

NODE_NAME = "Router Mask Preview"
FINAL = "final"
MAX_LISTED_STEPS = 8
MAX_STEPS_TEXT = 4000  # characters of 'steps' read: bounded work whatever is typed

log = logging.getLogger("comfyui_multisubject")


def parse_steps(text: str, recorded: list[int]) -> tuple[list[int], list[int]]:
    """(chosen recorded step indices, step indices asked for but not recorded) from 'final' or step numbers
    counted from 1, like '5, 10, final'.

    A step that was not recorded (beyond the run, or any numbered step with box routing, which records
    nothing) is reported in the preview rather than failing the run; 'final' with nothing recorded shows
    the boxes.
    """
    chosen, missing, known = [], [], set(recorded)
    for part in (p.strip().lower() for p in text[:MAX_STEPS_TEXT].split(",")):
        if not part:
            continue
        if part == FINAL:
            if not recorded:
                continue
            step = recorded[-1]
        else:
            try:
                step = int(part) - 1
            except ValueError:
                raise ValueError(f"{NODE_NAME}: steps must be 'final' or step numbers like '5, 10, final'; got '{part}'") from None
            if step not in known:
                if step not in missing and len(missing) <= MAX_LISTED_STEPS:
                    missing.append(step)
                continue
        if step not in chosen:
            chosen.append(step)
    return chosen, missing


def missing_steps_note(missing: list[int], recorded: list[int]) -> str:
    """One line for the preview and the log: which steps could not be shown, and why."""
    shown = ", ".join(str(step + 1) for step in missing[:MAX_LISTED_STEPS])
    if len(missing) > MAX_LISTED_STEPS:
        shown += " and more"
    shown = f"step{'s' if len(missing) > 1 else ''} {shown}"
    if not recorded:
        return f"{shown} not shown: per-step routes exist only with auto routing or a learned router (box routes shown)"
    return f"{shown} not shown: the last run recorded steps {recorded[0] + 1} to {recorded[-1] + 1}"


MAX_LAYERS_SHOWN = 8


def parse_layers(text: str, recorded: list[str]) -> list[str]:
    """Chosen recorded layer names from 'double_blocks.0, single_blocks.3' (empty: all layers)."""
    chosen = []
    for part in (p.strip() for p in text[:4000].split(",")):
        if not part:
            continue
        if part not in recorded:
            known = ", ".join(recorded[:MAX_LAYERS_SHOWN]) + (", ..." if len(recorded) > MAX_LAYERS_SHOWN else "")
            shown = part[:60].encode("unicode_escape").decode("ascii")
            raise ValueError(f"{NODE_NAME}: layer '{shown}' was not recorded; recorded layers: {known or 'none'}")
        if part not in chosen:
            chosen.append(part)
    return chosen


def attention_share_notes(routes) -> list[str]:
    """One line per step range: how much of each subject's recorded attention fell inside its box."""
    if routes.recorder is None or not routes.recorder.steps or len(routes.layout.boxes) != len(routes.phrases):
        return []
    lines = []
    for first, last, shares in shares_by_step_range(routes.recorder, routes.layout.tensor()):
        steps = f"step {first + 1}" if first == last else f"steps {first + 1}-{last + 1}"
        parts = ", ".join(f"{i + 1} {printable(phrase, 24)} {100 * float(share):.0f}%"
                          for i, (phrase, share) in enumerate(zip(routes.phrases, shares)))
        lines.append(f"in-box attention share, {steps}: {parts}")
    return lines


class RouterMaskPreview(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MSP_RouterMaskPreview",
            display_name=NODE_NAME,
            category=CATEGORY,
            **SEARCHABLE,
            description="Shows each subject's route in its own colour: the layout's boxes at every UNet resolution "
            "and, after sampling with auto routing, the routes the model used. MASK outputs one mask per subject.",
            inputs=[
                RoutesSocket.Input("routes"),
                io.Latent.Input("latent", tooltip="the sampler's output: its size, and it makes this node run after sampling"),
                io.Image.Input("image", optional=True, tooltip="draw the routes over this image (e.g. the decoded result)"),
                io.String.Input("steps", default=FINAL, optional=True,
                                tooltip="which sampling steps of the dynamic routes to show (counted from 1): 'final' or e.g. '5, 10, final'"),
                io.String.Input("layers", default="", optional=True,
                                tooltip="learned routes (AnyStory): which blocks to average, e.g. 'double_blocks.0, single_blocks.37'; "
                                "empty = all"),
            ],
            outputs=[io.Image.Output(display_name="preview"), io.Mask.Output(display_name="masks")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, routes, latent, image=None, steps: str = FINAL, layers: str = "") -> io.NodeOutput:
        latent_h, latent_w = latent["samples"].shape[-2:]
        height, width = (image.shape[1], image.shape[2]) if image is not None else (latent_h * LATENT_SCALE, latent_w * LATENT_SCALE)
        recorded = routes.recorder.steps if routes.recorder is not None else []
        static = sorted(routes.static_routes(latent_h, latent_w).items(), reverse=True)
        words = layer_words([hw for hw, _ in static])
        panels = [(f"boxes, {words[hw]}", r) for hw, r in static]
        chosen, missing = parse_steps(steps, recorded)
        picked = parse_layers(layers, routes.recorder.layers if routes.recorder is not None else [])
        where = f" {', '.join(picked)}" if picked and len(picked) <= 2 else (f" {len(picked)} blocks" if picked else "")
        for step in chosen:
            for (h, w), r in sorted(routes.recorder.routes_at(step, picked).items(), reverse=True):
                panels.append((f"step {step + 1}{where}, {words.get((h, w), f'{h}x{w} layers')}", r))
        notes = [missing_steps_note(missing, recorded)] if missing else []
        notes += attention_share_notes(routes)
        for note in notes:
            log.warning("%s: %s", NODE_NAME, note)
        masks = routes.image_masks(height, width, chosen[-1] if chosen else None, picked)
        # a row per source (boxes, each step) with a column per resolution; one resolution: a square-ish grid
        columns = len(static) if len(static) > 1 else math.ceil(math.sqrt(len(panels)))
        sheet = render(panels, routes.phrases, (height, width), image, columns=columns, notes=notes)
        return io.NodeOutput(sheet, masks.to(torch.float32), ui=ui.PreviewImage(sheet, cls=cls))
