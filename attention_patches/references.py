"""Preparing reference images for any kind: views, masks, background removal, phrase embeddings."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

import comfy.model_management as mm
import comfy.model_patcher

from ..models.sam import load_sam, segment

BACKGROUND = 1.0  # blanked background: white, like MS-Bench's product shots

# Penultimate hidden width of the CLIP-Vision families users load, for error messages.
IMAGE_ENCODER_FAMILIES = {
    1664: "CLIP-ViT-bigG (clip_vision_g.safetensors)",
    1280: "CLIP-ViT-H (clip_vision_h / CLIP-ViT-H-14, the IP-Adapter encoder)",
    1024: "CLIP-ViT-L",
    1152: "SigLIP",
    1536: "DINOv2",
}


def image_encoder_family(width: int) -> str:
    return IMAGE_ENCODER_FAMILIES.get(width, f"an image encoder with {width}-wide features")


def split_reference(image: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """RGB views and the subject mask (None if there is none).

    ``image`` is ComfyUI's [V, H, W, C] in 0..1 with C = 1 (grey), 2 (grey + alpha), 3 or 4
    (RGBA: alpha is a mask). ``mask`` is [M, h, w] (or [h, w]), white = subject; one mask
    serves every view, or one per view. Returns ([V, H, W, 3], [V, H, W] or None).
    """
    if image.dim() != 4 or image.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(f"expected an IMAGE [views, height, width, channels], got shape {list(image.shape)}")
    views, height, width, channels = image.shape
    alpha = image[..., -1] if channels in (2, 4) else None
    rgb = image[..., : 1 if channels <= 2 else 3]
    if rgb.shape[-1] == 1:
        rgb = rgb.expand(-1, -1, -1, 3)
    used = None
    if mask is not None:
        used = _fit_mask(mask, views, height, width).to(rgb)
    if alpha is not None:
        used = alpha if used is None else used * alpha
    return rgb.contiguous(), None if used is None else used.clamp(0, 1)


def blank_background(rgb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Views with everything outside ``mask`` replaced by the plain background."""
    return rgb * mask[..., None] + BACKGROUND * (1 - mask[..., None])


def _fit_mask(mask: torch.Tensor, views: int, height: int, width: int) -> torch.Tensor:
    if mask.dim() == 2:
        mask = mask[None]
    if mask.dim() != 3:
        raise ValueError(f"expected a MASK [batch, height, width], got shape {list(mask.shape)}")
    if mask.shape[0] not in (1, views):
        raise ValueError(f"the MASK batch ({mask.shape[0]}) must be 1 or match the number of reference views ({views})")
    if mask.shape[1:] != (height, width):
        mask = F.interpolate(mask[:, None].float(), size=(height, width), mode="bilinear", align_corners=False)[:, 0]
    return mask.expand(views, -1, -1)


_sam_cache: dict[str, comfy.model_patcher.ModelPatcher] = {}


def sam_patcher(path: str | Path) -> comfy.model_patcher.ModelPatcher:
    """The SAM model at ``path`` under a ModelPatcher (as ``.model["sam"]``); the last one used stays cached."""
    key = f"{Path(path).resolve()}:{Path(path).stat().st_mtime_ns}"
    if key not in _sam_cache:
        _sam_cache.clear()
        holder = torch.nn.ModuleDict({"sam": load_sam(path)})  # SAM's read-only .device clashes with ModelPatcher
        _sam_cache[key] = comfy.model_patcher.ModelPatcher(holder, load_device=mm.get_torch_device(),
                                                           offload_device=mm.unet_offload_device())
    return _sam_cache[key]


def segment_views(sam_path: str | Path, views: torch.Tensor, box: tuple[float, float, float, float] | None,
                  masks: torch.Tensor | None) -> torch.Tensor:
    """[V, H, W] subject masks SAM finds in each RGB view [V, H, W, 3], prompted by ``box`` or ``masks``."""
    patcher = sam_patcher(sam_path)
    mm.load_models_gpu([patcher])
    found = [
        segment(patcher.model["sam"], view, box, None if masks is None else masks[i]) for i, view in enumerate(views)
    ]
    return torch.stack(found).to(views)
