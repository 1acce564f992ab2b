"""Load Diffusion Model's stand-in for FastComposer's fine-tuned UNet: the tiny SD1.5 UNet of the SD1.5 checkpoint stand-in.

The FastComposer example loads the fine-tuned UNet with Load Diffusion Model and takes CLIP and VAE
from an SD1.5 checkpoint; the stand-in UNet is the one that checkpoint's tiny CLIP fits, and the
tiny FastComposer file the tests write carries its fingerprint.
"""

from .tiny_sd15_stand_ins import sd15_checkpoint

FASTCOMPOSER_UNET_MARKERS = ("fastcomposer",)


def unet_for(unet_name: str):
    """The tiny SD1.5 UNet, or None when the name is not FastComposer's UNet."""
    return sd15_checkpoint()[0] if any(m in unet_name.lower() for m in FASTCOMPOSER_UNET_MARKERS) else None
