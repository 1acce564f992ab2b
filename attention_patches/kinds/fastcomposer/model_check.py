"""Is the MODEL FastComposer's fine-tuned SD1.5 UNet? Another family is an error, a stock SD1.5 UNet a warning."""

from __future__ import annotations

import logging

from ...unet.blocks import cross_attention_blocks
from ..base import SubjectSetupError

log = logging.getLogger("comfyui_multisubject.fastcomposer")

UNET_ADVICE = ("load fastcomposer_unet.safetensors (written by scripts/convert_fastcomposer.py from the official "
               "pytorch_model.bin) from models/diffusion_models with Load Diffusion Model")
FINGERPRINT_TOLERANCE = 2e-3  # mean relative difference: fp16/bf16 storage passes, another fine-tune does not


def check_model(model, encoder) -> None:
    """SubjectSetupError for a MODEL FastComposer cannot condition; a warning for a UNet that is not its fine-tune."""
    config = getattr(model.model, "model_config", None)
    context_dim = (getattr(config, "unet_config", None) or {}).get("context_dim")
    family = type(config).__name__ if config is not None else "unknown"
    if context_dim != encoder.embed_dim or not cross_attention_blocks(model):
        raise SubjectSetupError(
            f"the subject encoder '{encoder.name}' is FastComposer for SD1.5 (cross-attention width {encoder.embed_dim}) but the "
            f"MODEL is {family} (cross-attention width {context_dim}): {UNET_ADVICE}"
        )
    if encoder.unet_fingerprint is None:
        return
    weight = model.get_model_object("diffusion_model").input_blocks[0][0].weight
    found = weight.detach().flatten()[: encoder.unet_fingerprint.numel()].float().cpu()
    expected = encoder.unet_fingerprint
    difference = ((found - expected).abs().mean() / expected.abs().mean().clamp(min=1e-12)).item()
    if found.shape != expected.shape or difference > FINGERPRINT_TOLERANCE:
        log.warning(
            "FastComposer: the MODEL's UNet is not FastComposer's fine-tuned UNet (a stock SD1.5 or another fine-tune?); "
            "faces lose their identity without it: %s. (A UNet stored in fp8 also triggers this warning.)", UNET_ADVICE,
        )
