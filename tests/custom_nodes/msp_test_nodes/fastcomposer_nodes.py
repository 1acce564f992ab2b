"""Load Diffusion Model's stand-in for the FastComposer example: the tiny SD1.5 UNet of the SD1.5 checkpoint stand-in.

The example loads FastComposer's fine-tuned UNet with Load Diffusion Model and takes CLIP and VAE
from an SD1.5 checkpoint; the stand-in UNet is the one that checkpoint's tiny CLIP fits, and the
tiny FastComposer file the tests write carries its fingerprint.
"""

from comfy_api.latest import io

from .tiny_sd15_stand_ins import sd15_checkpoint

CATEGORY = "multi_subject/testing"


class TinyUNetLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="MSPTest_TinyUNetLoader", category=CATEGORY,
                         inputs=[io.String.Input("unet_name", default="tiny-sd15-unet")], outputs=[io.Model.Output()])

    @classmethod
    def execute(cls, unet_name):
        return io.NodeOutput(sd15_checkpoint()[0])
