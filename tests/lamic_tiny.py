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


def tiny_flux_controlnet(seed: int = 21, depth: int = 2):
    """An XLabs-layout FLUX ControlNet (``comfy.ldm.flux.controlnet.ControlNetFlux``) for the tiny FLUX, random weights.

    Its state dict has the keys ComfyUI's loader routes to ``load_controlnet_flux_xlabs_mistoline``
    (``controlnet_blocks.0.weight``, ``double_blocks.0.img_attn.norm.key_norm.scale``, ``input_hint_block``), and
    it is built and wrapped as that loader does. The loader itself cannot build a tiny one: its key detection
    fixes 24 heads and [16, 56, 56] RoPE axes, i.e. a 3072-wide ControlNet, and a ControlNet's width must be
    the model's. Returns (the ControlNet, its state dict).
    """
    import comfy.controlnet
    import comfy.ldm.flux.controlnet
    import comfy.ops

    from devkit.anystory_tiny import FLUX_CONFIG
    from devkit.tiny_models import fill_seeded

    config = {**FLUX_CONFIG, "depth": depth, "depth_single_blocks": 0}
    built = fill_seeded(comfy.ldm.flux.controlnet.ControlNetFlux(operations=comfy.ops.disable_weight_init, **config), seed)
    state_dict = built.state_dict()
    control_model = comfy.ldm.flux.controlnet.ControlNetFlux(operations=comfy.ops.disable_weight_init, **config)
    control_model = comfy.controlnet.controlnet_load_state_dict(control_model, state_dict)
    control = comfy.controlnet.ControlNet(control_model, load_device=mm.get_torch_device(), manual_cast_dtype=None,
                                          extra_conds=["y", "guidance"])
    return control, state_dict
