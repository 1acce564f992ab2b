"""Router Mask Preview: see where each subject was routed, and reuse the routes as masks."""

import torch

from comfy_api.latest import io, ui

from ..attention_patches.route_preview import LATENT_SCALE, render
from .types import CATEGORY, RoutesSocket

NODE_NAME = "Router Mask Preview"
FINAL = "final"


def parse_steps(text: str, recorded: list[int]) -> list[int]:
    """Chosen recorded step indices from 'final' or step numbers counted from 1, like '5, 10, final'.

    Nothing is chosen when nothing was recorded (box routing, or no sampling run yet).
    """
    if not recorded:
        return []
    chosen = []
    for part in (p.strip().lower() for p in text.split(",")):
        if not part:
            continue
        if part == FINAL:
            step = recorded[-1]
        else:
            try:
                step = int(part) - 1
            except ValueError:
                raise ValueError(f"{NODE_NAME}: steps must be 'final' or step numbers like '5, 10, final'; got '{part}'") from None
            if step not in recorded:
                raise ValueError(f"{NODE_NAME}: step {step + 1} was not recorded; the last run recorded steps "
                                 f"{recorded[0] + 1} to {recorded[-1] + 1}")
        if step not in chosen:
            chosen.append(step)
    return chosen


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


class RouterMaskPreview(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MSP_RouterMaskPreview",
            display_name=NODE_NAME,
            category=CATEGORY,
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
        panels = [(f"boxes {h}x{w}", r) for (h, w), r in sorted(routes.static_routes(latent_h, latent_w).items(), reverse=True)]
        chosen = parse_steps(steps, recorded)
        picked = parse_layers(layers, routes.recorder.layers if routes.recorder is not None else [])
        where = f" {', '.join(picked)}" if picked and len(picked) <= 2 else (f" {len(picked)} blocks" if picked else "")
        for step in chosen:
            for (h, w), r in sorted(routes.recorder.routes_at(step, picked).items(), reverse=True):
                panels.append((f"step {step + 1}{where} {h}x{w}", r))
        masks = routes.image_masks(height, width, chosen[-1] if chosen else None, picked)
        sheet = render(panels, routes.phrases, (height, width), image)
        return io.NodeOutput(sheet, masks.to(torch.float32), ui=ui.PreviewImage(sheet, cls=cls))
