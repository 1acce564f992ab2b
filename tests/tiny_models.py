"""Tiny random-weight stand-ins for the multi-GB models, with the real architectures and key layouts.

- SDXL UNet: ComfyUI's own SDXL model class with SDXL's exact transformer topology (all 70
  cross-attention blocks) at small widths.
- SDXL CLIP: ComfyUI's SDXLClipModel (CLIP-L + CLIP-G) with 3 layers each and small widths;
  the UNet's context width is their sum.
- CLIP-Vision: ComfyUI's ClipVisionModel (224 px, patch 14: the real 257 tokens) at small width.
- VAE: TAESD (the SDXL preview VAE ComfyUI ships the architecture of).
- Subject encoder: an ``ms_adapter.bin``-style dict for the tiny UNet, official key names.

Everything is seeded, so two builds with the same seed are identical.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import torch

import comfy.clip_vision
import comfy.model_management as mm
import comfy.model_patcher
import comfy.sd
import comfy.supported_models
import comfy.supported_models_base
import comfy.taesd.taesd
from msp_package import pack

CLIP_L_WIDTH = 32
CLIP_G_WIDTH = 64
CONTEXT_DIM = CLIP_L_WIDTH + CLIP_G_WIDTH
SIZE_EMBEDDINGS = 6 * 256  # SDXL's ADM: pooled CLIP-G output + six 256-wide size/crop embeddings
VISION_WIDTH = 48
VIT_H_STANDIN_WIDTH = 40  # a CLIP-Vision of another width, for the wrong-encoder errors
RESAMPLER = {"dim": 128, "depth": 2, "dim_head": 64, "num_queries": 16, "ff_mult": 4, "fourier_freqs": 8}

UNET_CONFIG = {
    "model_channels": 32,
    "channel_mult": [1, 2, 4],
    "num_res_blocks": [2, 2, 2],
    "transformer_depth": [0, 0, 2, 2, 10, 10],
    "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
    "transformer_depth_middle": 10,
    "context_dim": CONTEXT_DIM,
    "adm_in_channels": CLIP_G_WIDTH + SIZE_EMBEDDINGS,
    "use_linear_in_transformer": True,
    "num_head_channels": 16,
    "in_channels": 4,
    "out_channels": 4,
    "use_spatial_transformer": True,
    "legacy": False,
    "num_classes": "sequential",
    "image_size": 32,
    "use_temporal_attention": False,
    "use_temporal_resblock": False,
    "use_checkpoint": False,
}


def fill_seeded(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Deterministic weights that keep activations O(1): norms 1, biases small, matrices ~ 1/sqrt(fan_in)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(module.state_dict(keep_vars=True).items()):
            if not param.is_floating_point():
                continue
            if param.dim() <= 1:
                is_norm_weight = name.endswith("weight") and any(k in name for k in ("norm", "ln", "layer_norm"))
                value = torch.ones(param.shape) if is_norm_weight else torch.randn(param.shape, generator=generator) * 0.02
            else:
                fan_in = math.prod(param.shape[1:])
                value = torch.randn(param.shape, generator=generator) / math.sqrt(fan_in)
            param.copy_(value.to(param.dtype))
    return module


def _tiny_unet(model_config: comfy.supported_models_base.BASE, seed: int) -> comfy.model_patcher.ModelPatcher:
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({})
    fill_seeded(model.diffusion_model, seed)
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())


def tiny_sdxl_model(seed: int = 0) -> comfy.model_patcher.ModelPatcher:
    return _tiny_unet(comfy.supported_models.SDXL(dict(UNET_CONFIG)), seed)


SD15_UNET_CONFIG = {
    "model_channels": 32, "channel_mult": [1, 2, 4, 4], "num_res_blocks": [2, 2, 2, 2],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "transformer_depth_middle": 1, "context_dim": 768, "use_linear_in_transformer": False, "adm_in_channels": None,
    "in_channels": 4, "out_channels": 4, "use_spatial_transformer": True, "legacy": False, "image_size": 32,
    "use_temporal_attention": False, "use_temporal_resblock": False, "use_checkpoint": False,
}


def tiny_sd15_model(seed: int = 5) -> comfy.model_patcher.ModelPatcher:
    """An SD1.5-topology UNet (cross-attention width 768), for the wrong-model errors."""
    return _tiny_unet(comfy.supported_models.SD15(dict(SD15_UNET_CONFIG)), seed)


def _text_config(width: int) -> dict:
    return {"hidden_size": width, "intermediate_size": width * 4, "num_attention_heads": 2, "num_hidden_layers": 3,
            "projection_dim": width}


def tiny_sdxl_clip(seed: int = 1) -> comfy.sd.CLIP:
    target = comfy.supported_models.SDXL(dict(UNET_CONFIG)).clip_target()
    options = {
        "clip_l_model_config": _text_config(CLIP_L_WIDTH),
        "clip_g_model_config": _text_config(CLIP_G_WIDTH),
        "dtype": torch.float32,
    }
    clip = comfy.sd.CLIP(target=target, model_options=options)
    fill_seeded(clip.cond_stage_model, seed)
    return clip


def tiny_clip_vision(seed: int = 2, width: int = VISION_WIDTH) -> comfy.clip_vision.ClipVisionModel:
    config = {
        "attention_dropout": 0.0, "dropout": 0.0, "hidden_act": "gelu", "hidden_size": width, "image_size": 224,
        "initializer_factor": 1.0, "initializer_range": 0.02, "intermediate_size": width * 4, "layer_norm_eps": 1e-05,
        "model_type": "clip_vision_model", "num_attention_heads": 2, "num_channels": 3, "num_hidden_layers": 3,
        "patch_size": 14, "projection_dim": 32, "torch_dtype": "float32",
    }
    model = clip_vision_model(config)
    fill_seeded(model.model, seed)
    return model


def clip_vision_model(config: dict) -> comfy.clip_vision.ClipVisionModel:
    """ComfyUI's own ClipVisionModel built from an HF-style config (CLIP or SigLIP), weights uninitialised."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "clip_vision.json"
        path.write_text(json.dumps(config))
        return comfy.clip_vision.ClipVisionModel(str(path))


def tiny_vae(seed: int = 3) -> comfy.sd.VAE:
    taesd = fill_seeded(comfy.taesd.taesd.TAESD(latent_channels=4), seed)
    return comfy.sd.VAE(sd=taesd.state_dict())


def unet_cross_attention_widths(model: comfy.model_patcher.ModelPatcher) -> dict[tuple[str, int, int], int]:
    """Width of every attn2 of the tiny UNet, by ComfyUI key."""
    import comfy.ldm.modules.attention as attention

    widths = {}
    diffusion_model = model.model.diffusion_model
    for block, stages in (("input", diffusion_model.input_blocks), ("output", diffusion_model.output_blocks),
                          ("middle", [diffusion_model.middle_block])):
        for number, stage in enumerate(stages):
            for module in stage:
                if isinstance(module, attention.SpatialTransformer):
                    for index, transformer in enumerate(module.transformer_blocks):
                        widths[(block, number, index)] = transformer.attn2.to_q.out_features
    return widths


def tiny_subject_encoder_state_dict(seed: int = 4, widths: dict | None = None, vision_width: int = VISION_WIDTH) -> dict:
    """A nested dict shaped like the official ms_adapter.bin, for the tiny UNet."""
    layer_map = pack("attention_patches.kinds.ms_diffusion.layer_map")
    resampler_mod = pack("models.ms_diffusion.resampler")
    encoder_mod = pack("models.ms_diffusion.model")
    if widths is None:
        widths = {(span.block, span.number, t): UNET_CONFIG["model_channels"] * UNET_CONFIG["channel_mult"][span.downscale.bit_length() - 1]
                  for span in layer_map.SDXL_BLOCKS for t in range(span.transformers)}
    config = resampler_mod.ResamplerConfig(
        dim=RESAMPLER["dim"], depth=RESAMPLER["depth"], heads=RESAMPLER["dim"] // RESAMPLER["dim_head"],
        dim_head=RESAMPLER["dim_head"], num_queries=RESAMPLER["num_queries"], embedding_dim=vision_width,
        output_dim=CONTEXT_DIM, ff_mult=RESAMPLER["ff_mult"], phrase_dim=CLIP_L_WIDTH, fourier_freqs=RESAMPLER["fourier_freqs"],
    )
    hidden = {index: widths[layer_map.sdxl_key_for_index(index)] for index in layer_map.SDXL_ADAPTER_INDICES}
    module = fill_seeded(encoder_mod.MSDiffusionEncoder(config, hidden), seed)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        module.image_proj.grounding_latents.copy_(torch.randn(module.image_proj.grounding_latents.shape, generator=generator))
    state = module.state_dict()
    return {
        "image_proj": {k[len("image_proj."):]: v.clone() for k, v in state.items() if k.startswith("image_proj.")},
        "ms_adapter": {k[len("ms_adapter."):]: v.clone() for k, v in state.items() if k.startswith("ms_adapter.")},
        "dummy_image_tokens": torch.randn(1, 4, CONTEXT_DIM, generator=generator),
    }


def save_subject_encoder(path: str | Path, seed: int = 4, **kwargs) -> Path:
    """Write the tiny encoder as .bin (torch.save of the nested dict) or .safetensors (flat keys)."""
    path = Path(path)
    state = tiny_subject_encoder_state_dict(seed, **kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        flat = {f"{top}.{k}": v for top in ("image_proj", "ms_adapter") for k, v in state[top].items()}
        flat["dummy_image_tokens"] = state["dummy_image_tokens"]
        save_file(flat, str(path))
    else:
        torch.save(state, str(path))
    return path


def tiny_controlnet(seed: int = 6):
    """A ControlNet with ComfyUI's real architecture (``comfy.cldm.cldm.ControlNet``) for the tiny SDXL UNet.

    Built from ``UNET_CONFIG`` with a 3-channel hint, exactly as ``comfy.controlnet`` builds one from a file,
    and wrapped in ``comfy.controlnet.ControlNet`` (what ControlNetLoader returns).
    """
    import comfy.cldm.cldm
    import comfy.controlnet
    import comfy.ops

    config = {k: v for k, v in UNET_CONFIG.items() if k != "out_channels"}
    config.update(hint_channels=3, operations=comfy.ops.disable_weight_init, dtype=torch.float32,
                  device=mm.unet_offload_device())
    control_model = fill_seeded(comfy.cldm.cldm.ControlNet(**config), seed)
    return comfy.controlnet.ControlNet(control_model, load_device=mm.get_torch_device(), manual_cast_dtype=None)


LORA_UNET_MODULES = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
                     "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0")
LORA_CLIP_MODULES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj")


def tiny_lora_state_dict(rank: int = 4, seed: int = 8, magnitude: float = 0.1) -> dict[str, torch.Tensor]:
    """A kohya-format SDXL LoRA (the format of e.g. sd_xl_offset_example-lora_1.0) for the tiny models.

    UNet keys use the diffusers block names SDXL LoRAs carry (``lora_unet_down_blocks_1_attentions_0_...``),
    mapped with ComfyUI's own ``unet_to_diffusers`` for ``UNET_CONFIG``; text-encoder keys use
    ``lora_te1_`` (CLIP-L) and ``lora_te2_`` (CLIP-G). Every key matches a real weight of the tiny models.
    """
    import comfy.utils

    generator = torch.Generator().manual_seed(seed)
    unet_config = comfy.supported_models.SDXL(dict(UNET_CONFIG))
    unet_config.set_inference_dtype(torch.float32, None)
    unet = unet_config.get_model({}, device=torch.device("meta"))  # shapes only
    unet_shapes = {k: v.shape for k, v in unet.diffusion_model.state_dict().items()}
    targets = {}  # lora name -> weight shape
    for diffusers_key, ldm_key in sorted(comfy.utils.unet_to_diffusers(dict(UNET_CONFIG)).items()):
        if ldm_key.endswith(".weight") and any(ldm_key.endswith(m + ".weight") for m in LORA_UNET_MODULES):
            targets["lora_unet_" + diffusers_key[:-len(".weight")].replace(".", "_")] = unet_shapes[ldm_key]
    clip_shapes = {k: v.shape for k, v in tiny_sdxl_clip().cond_stage_model.state_dict().items()}
    for prefix, encoder in (("lora_te1", "clip_l"), ("lora_te2", "clip_g")):
        for layer in range(3):
            for module in LORA_CLIP_MODULES:
                key = f"{encoder}.transformer.text_model.encoder.layers.{layer}.{module}.weight"
                targets[f"{prefix}_text_model_encoder_layers_{layer}_{module.replace('.', '_')}"] = clip_shapes[key]
    state = {}
    for name, (out_features, in_features) in targets.items():
        state[f"{name}.lora_down.weight"] = torch.randn(rank, in_features, generator=generator) * magnitude
        state[f"{name}.lora_up.weight"] = torch.randn(out_features, rank, generator=generator) * magnitude
        state[f"{name}.alpha"] = torch.tensor(float(rank))
    return state


def save_tiny_lora(path: str | Path, **kwargs) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tiny_lora_state_dict(**kwargs), str(path))
    return path
