"""Tiny stand-ins for the in-context models' files (Qwen-Image-Edit-2509, FLUX.2 [dev]), picked by file name.

UNETLoader and VAELoader keep their FLUX.1 stand-ins (Kontext included) for every other name; CLIPLoader's
stand-in builds the text encoder its ``type`` names.
"""

from functools import lru_cache

from comfy_api.latest import io

from devkit import incontext_tiny

CATEGORY = "multi_subject/testing"
QWEN_MARKER, FLUX2_MARKER = "qwen", "flux2"


@lru_cache(maxsize=None)
def qwen_parts():
    return incontext_tiny.tiny_qwen_image(layers=1), incontext_tiny.tiny_qwen_edit_clip(), incontext_tiny.tiny_qwen_vae()


@lru_cache(maxsize=None)
def flux2_parts():
    return incontext_tiny.tiny_flux2(), incontext_tiny.tiny_flux2_clip(), incontext_tiny.tiny_flux2_vae()


def _parts_for(name: str):
    lowered = name.lower()
    return qwen_parts() if QWEN_MARKER in lowered else flux2_parts() if FLUX2_MARKER in lowered else None


def incontext_unet_for(unet_name: str):
    """The tiny Qwen-Image or FLUX.2 model for such a file name, else None."""
    parts = _parts_for(unet_name)
    return parts[0] if parts else None


def incontext_vae_for(vae_name: str):
    """The tiny Qwen-Image or FLUX.2 VAE for such a file name, else None."""
    parts = _parts_for(vae_name)
    return parts[2] if parts else None


CLIP_TYPES = {"qwen_image": QWEN_MARKER, "flux2": FLUX2_MARKER}


class TinyCLIPLoader(io.ComfyNode):
    """Stands in for CLIPLoader: type qwen_image (Qwen2.5-VL, vision tower included) or flux2 (Mistral-3)."""

    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="MSPTest_TinyCLIPLoader", category=CATEGORY,
                         inputs=[io.String.Input("clip_name", default="qwen_2.5_vl_7b_fp8_scaled.safetensors"),
                                 io.String.Input("type", default="qwen_image"), io.String.Input("device", default="default")],
                         outputs=[io.Clip.Output()])

    @classmethod
    def execute(cls, clip_name, type, device):
        if type not in CLIP_TYPES:
            raise ValueError(f"the tiny CLIPLoader builds {sorted(CLIP_TYPES)}, not {type!r}")
        return io.NodeOutput(_parts_for(CLIP_TYPES[type])[1])


INCONTEXT_NODES = [TinyCLIPLoader]
