"""SD1.5 stand-ins for the tiny loaders: chosen by the file name a workflow asks for.

An example naming an SD1.5 checkpoint (``v1-5-...``) gets the tiny SD1.5-topology UNet + CLIP;
one naming the ViT-L/14 CLIP vision (``clip-vit-large-patch14...``) gets the tiny ViT-L-shaped
tower SSR-Encoder needs. Every other name keeps the SDXL stand-ins.
"""

from functools import lru_cache

from devkit import tiny_models
from devkit import tiny_sd15

SD15_CHECKPOINT_MARKERS = ("v1-5", "sd15", "sd1.5", "sd-v1")
VIT_L_MARKERS = ("vit-large", "vit_large", "vit-l", "vit_l")


@lru_cache(maxsize=None)
def sd15_checkpoint():
    return tiny_sd15.tiny_sd15_unet(), tiny_sd15.tiny_sd15_clip(), tiny_models.tiny_vae()


@lru_cache(maxsize=None)
def vit_l():
    return tiny_sd15.tiny_vit_l()


def checkpoint_for(ckpt_name: str):
    """(MODEL, CLIP, VAE) of the tiny SD1.5 stand-in, or None when the name is not an SD1.5 checkpoint."""
    return sd15_checkpoint() if any(m in ckpt_name.lower() for m in SD15_CHECKPOINT_MARKERS) else None


def clip_vision_for(clip_name: str):
    """The tiny ViT-L/14-shaped CLIP vision, or None when the name is not a ViT-L."""
    return vit_l() if any(m in clip_name.lower() for m in VIT_L_MARKERS) else None
