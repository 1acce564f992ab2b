"""Test-only nodes: loaders that build the tiny stand-in models, and probes that echo what the pack received.

Loaded by the test servers (and `make demo TINY=1`) next to the pack; never part of the pack.
"""

import sys
from functools import lru_cache
from pathlib import Path

from typing_extensions import override

from comfy_api.latest import ComfyExtension, io

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import tiny_models  # noqa: E402

from .flux_stand_ins import FLUX_NODES, siglip_for  # noqa: E402
from .incontext_stand_ins import INCONTEXT_NODES  # noqa: E402
from .tiny_sd15_stand_ins import checkpoint_for, clip_vision_for  # noqa: E402

CATEGORY = "multi_subject/testing"


@lru_cache(maxsize=None)
def checkpoint():
    return tiny_models.tiny_sdxl_model(), tiny_models.tiny_sdxl_clip(), tiny_models.tiny_vae()


@lru_cache(maxsize=None)
def clip_vision(variant: str):
    width = tiny_models.VISION_WIDTH if variant == "bigG" else tiny_models.VIT_H_STANDIN_WIDTH
    return tiny_models.tiny_clip_vision(width=width)


class TinyCheckpointLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MSPTest_TinyCheckpointLoader", category=CATEGORY,
            inputs=[io.String.Input("ckpt_name", default="tiny-sdxl")],
            outputs=[io.Model.Output(), io.Clip.Output(), io.Vae.Output()],
        )

    @classmethod
    def execute(cls, ckpt_name):
        return io.NodeOutput(*(checkpoint_for(ckpt_name) or checkpoint()))


class TinySD15Loader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="MSPTest_TinySD15Loader", category=CATEGORY, inputs=[], outputs=[io.Model.Output()])

    @classmethod
    def execute(cls):
        return io.NodeOutput(tiny_models.tiny_sd15_model())


class TinyCLIPVisionLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MSPTest_TinyCLIPVisionLoader", category=CATEGORY,
            inputs=[io.String.Input("clip_name", default="tiny-clip-vision"),
                    io.Combo.Input("variant", options=["bigG", "ViT-H"], default="bigG")],
            outputs=[io.ClipVision.Output()],
        )

    @classmethod
    def execute(cls, clip_name, variant):
        return io.NodeOutput(clip_vision_for(clip_name) or siglip_for(clip_name) or clip_vision(variant))


@lru_cache(maxsize=None)
def controlnet():
    return tiny_models.tiny_controlnet()


class TinyControlNetLoader(io.ComfyNode):
    """Stands in for ControlNetLoader: ComfyUI's real ControlNet architecture at the tiny SDXL UNet's config."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MSPTest_TinyControlNetLoader", category=CATEGORY,
            inputs=[io.String.Input("control_net_name", default="tiny-controlnet")],
            outputs=[io.ControlNet.Output()],
        )

    @classmethod
    def execute(cls, control_net_name):
        return io.NodeOutput(controlnet())


class LayoutEcho(io.ComfyNode):
    """Shows the layout the backend received, in the prompt's history."""

    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="MSPTest_LayoutEcho", category=CATEGORY,
                         inputs=[io.Custom("MSP_LAYOUT").Input("layout")], outputs=[], is_output_node=True)

    @classmethod
    def execute(cls, layout):
        return io.NodeOutput(ui={"layout": [layout.to_json()], "size": [[layout.width, layout.height]]})


class TestNodes(ComfyExtension):
    @override
    async def get_node_list(self):
        return [TinyCheckpointLoader, TinySD15Loader, TinyCLIPVisionLoader, TinyControlNetLoader, LayoutEcho, *FLUX_NODES, *INCONTEXT_NODES]


async def comfy_entrypoint():
    return TestNodes()
