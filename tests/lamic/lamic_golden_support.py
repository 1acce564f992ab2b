"""The LAMIC goldens' tiny FLUX (Kontext topology) under a real ModelPatcher, and the goldens' tensors in ComfyUI's shapes."""

from __future__ import annotations

import torch
from einops import rearrange

import comfy.model_management as mm
import comfy.model_patcher
import comfy.supported_models

from devkit.pack import pack


def golden_flux(golden):
    """ComfyUI's FLUX from ``cases.json`` ``comfy_flux_params`` with the goldens' ``bfl.*`` weights (strict), fp32."""
    config = comfy.supported_models.Flux({"image_model": "flux", **golden.cases["comfy_flux_params"]})
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({})
    weights = {k[len("bfl."):]: v for k, v in golden.tensors("weights").items() if k.startswith("bfl.")}
    model.diffusion_model.load_state_dict(weights, strict=True)
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())


def unpack(tokens: torch.Tensor, hw: tuple[int, int], patch: int = 2) -> torch.Tensor:
    """[B, h*w, C*p*p] packed tokens -> [B, C, h*p, w*p] latent."""
    return rearrange(tokens, "b (h w) (c ph pw) -> b c (h ph) (w pw)", h=hw[0], w=hw[1], ph=patch, pw=patch)


def reference_latents(golden, case: str, name: str = "ref_tokens") -> list[torch.Tensor]:
    """Each reference's normalised latent [1, C, h, w] from the packed ``refs`` tensor of ``case``."""
    tokens = golden.tensors("refs")[f"{case}.out.{name}"]
    out, start = [], 0
    for size in golden.cases["grouping"][case]["ref_sizes"]:
        h, w = size["tokens_hw"]
        out.append(unpack(tokens[:, start:start + h * w], (h, w)))
        start += h * w
    return out


def golden_classes(golden, case: str):
    """{stage: TokenClasses} of the goldens' dense stage masks."""
    masked = pack("attention_patches.dit.masked_attention")
    masks = golden.tensors("masks")
    return {1: masked.classes_from_dense(masks[f"{case}.out.mask_stage1"]), 2: masked.classes_from_dense(masks[f"{case}.out.mask_stage2"])}


def target_hw(golden) -> tuple[int, int]:
    h, w = golden.cases["config"]["image_hw"]
    return h // 16, w // 16

