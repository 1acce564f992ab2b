"""Tiny stand-ins of the FastComposer example: an SD1.5 checkpoint's CLIP and VAE (the UNet is TinySD15Loader's)."""

from functools import lru_cache

import tiny_models
from tiny_sd15_fastcomposer import tiny_sd15_clip

SD15_CHECKPOINTS = {"v1-5-pruned-emaonly-fp16.safetensors", "v1-5-pruned-emaonly.safetensors"}


@lru_cache(maxsize=None)
def sd15_checkpoint():
    """(MODEL, CLIP, VAE) of a tiny SD1.5 checkpoint: the tiny SD1.5 UNet, a 768-wide CLIP with the real tokenizer, TAESD."""
    return tiny_models.tiny_sd15_model(), tiny_sd15_clip(), tiny_models.tiny_vae()
