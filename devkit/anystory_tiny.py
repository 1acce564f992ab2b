"""Tiny FLUX-topology model (and a ControlNet for it) and a tiny AnyStory file in the official layout, for sampler and node tests."""

from __future__ import annotations

import torch

import comfy.model_management as mm
import comfy.model_patcher
import comfy.supported_models

from .tiny_models import clip_vision_model, fill_seeded

HIDDEN, HEADS, MLP = 32, 2, 128
DOUBLE, SINGLE = 2, 2
TXT_DIM, POOLED_DIM, SIGLIP_DIM = 48, 24, 32
LATENT_CHANNELS = 16
FLUX_CONFIG = {
    "image_model": "flux", "in_channels": LATENT_CHANNELS, "patch_size": 2, "out_channels": LATENT_CHANNELS,
    "vec_in_dim": POOLED_DIM, "context_in_dim": TXT_DIM, "hidden_size": HIDDEN, "mlp_ratio": MLP / HIDDEN, "num_heads": HEADS,
    "depth": DOUBLE, "depth_single_blocks": SINGLE, "axes_dim": [4, 6, 6], "theta": 10000, "qkv_bias": True, "guidance_embed": True,
}
REF_MODULES = ["x_embedder"] + [f"transformer_blocks.{i}.{m}" for i in range(DOUBLE) for m in (
    "norm1.linear", "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "ff.net.2")]
ROUTER_MODULES = ["context_embedder"] + [f"transformer_blocks.{i}.{m}" for i in range(DOUBLE) for m in (
    "norm1_context.linear", "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out", "ff_context.net.2")]
SINGLE_MODULES = [f"single_transformer_blocks.{i}.{m}" for i in range(SINGLE) for m in (
    "norm.linear", "proj_mlp", "attn.to_q", "attn.to_k", "attn.to_v", "proj_out")]


def tiny_flux_model(seed: int = 11, dtype: torch.dtype = torch.float32, compute_dtype: torch.dtype | None = None):
    """ComfyUI's FLUX (supported_models.Flux, real key layout) at a tiny width; ``dtype`` is the weights' storage type."""
    config = comfy.supported_models.Flux(dict(FLUX_CONFIG))
    config.set_inference_dtype(dtype, compute_dtype)
    model = config.get_model({})
    fill_seeded(model.diffusion_model, seed)
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())


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

    config = {**FLUX_CONFIG, "depth": depth, "depth_single_blocks": 0}
    built = fill_seeded(comfy.ldm.flux.controlnet.ControlNetFlux(operations=comfy.ops.disable_weight_init, **config), seed)
    state_dict = built.state_dict()
    control_model = comfy.ldm.flux.controlnet.ControlNetFlux(operations=comfy.ops.disable_weight_init, **config)
    control_model = comfy.controlnet.controlnet_load_state_dict(control_model, state_dict)
    control = comfy.controlnet.ControlNet(control_model, load_device=mm.get_torch_device(), manual_cast_dtype=None,
                                          extra_conds=["y", "guidance"])
    return control, state_dict


def _shape(module: str) -> tuple[int, int]:
    """(in, out) of a diffusers FLUX module at the tiny size."""
    name = module.split(".", 2)[-1] if "blocks." in module else module
    return {
        "x_embedder": (LATENT_CHANNELS * 4, HIDDEN), "context_embedder": (TXT_DIM, HIDDEN), "norm1.linear": (HIDDEN, 6 * HIDDEN),
        "norm1_context.linear": (HIDDEN, 6 * HIDDEN), "norm.linear": (HIDDEN, 3 * HIDDEN), "proj_mlp": (HIDDEN, MLP),
        "proj_out": (HIDDEN + MLP, HIDDEN), "ff.net.2": (MLP, HIDDEN), "ff_context.net.2": (MLP, HIDDEN),
    }.get(name, (HIDDEN, HIDDEN))


def _embedder(generator, base: bool, scale: float) -> dict[str, torch.Tensor]:
    def rnd(*shape):
        return torch.randn(*shape, generator=generator) * scale

    state = {"redux_up_lora_A.weight": rnd(8, SIGLIP_DIM), "redux_up_lora_B.weight": rnd(3 * TXT_DIM, 8),
             "redux_up_lora_B.bias": rnd(3 * TXT_DIM), "redux_down_lora_A.weight": rnd(8, 3 * TXT_DIM),
             "redux_down_lora_B.weight": rnd(TXT_DIM, 8), "redux_down_lora_B.bias": rnd(TXT_DIM),
             "gate_proj.weight": rnd(1, TXT_DIM), "gate_proj.bias": rnd(1)}
    if base:
        state.update(tiny_redux_state(generator))
    return state


def tiny_redux_state(generator=None) -> dict[str, torch.Tensor]:
    """Redux's redux_up/redux_down at the tiny size (what flux1-redux-dev.safetensors holds)."""
    generator = generator or torch.Generator().manual_seed(21)
    return {"redux_up.weight": torch.randn(3 * TXT_DIM, SIGLIP_DIM, generator=generator) * 0.2,
            "redux_up.bias": torch.randn(3 * TXT_DIM, generator=generator) * 0.02,
            "redux_down.weight": torch.randn(TXT_DIM, 3 * TXT_DIM, generator=generator) * 0.1,
            "redux_down.bias": torch.randn(TXT_DIM, generator=generator) * 0.02}


def tiny_anystory(seed: int = 12, base_redux: bool = True, scale: float = 0.2) -> dict:
    """A nested dict in the layout of anystory_flux.bin, for this tiny FLUX."""
    generator = torch.Generator().manual_seed(seed)

    def lora(modules, rank):
        out = {}
        for module in modules:
            fan_in, fan_out = _shape(module)
            out[f"transformer.{module}.lora_A.weight"] = torch.randn(rank, fan_in, generator=generator) / fan_in ** 0.5
            out[f"transformer.{module}.lora_B.weight"] = torch.randn(fan_out, rank, generator=generator) * scale
        return out

    router = lora(ROUTER_MODULES + SINGLE_MODULES, 6)
    for block in [f"transformer_blocks.{i}" for i in range(DOUBLE)] + [f"single_transformer_blocks.{i}" for i in range(SINGLE)]:
        for qk in "qk":
            prefix = f"transformer.{block}.attn.processor.to_{qk}_routing_map_lora_"
            router[prefix + "A.weight"] = torch.randn(8, HIDDEN, generator=generator) / HIDDEN ** 0.5
            router[prefix + "B.weight"] = torch.randn(HIDDEN, 8, generator=generator) * scale
            router[prefix + "B.bias"] = torch.randn(HIDDEN, generator=generator) * scale
    router.update({f"router_embedder.{k}": v for k, v in _embedder(generator, base_redux, scale).items()})
    return {"ref": lora(REF_MODULES + SINGLE_MODULES, 4), "redux": _embedder(generator, base_redux, scale), "router": router}


def tiny_encodings(count: int, seed: int = 13, ref_grid: int = 4):
    """Encoded subjects as the AnyStory kind's encode returns them (random, the right shapes)."""
    generator = torch.Generator().manual_seed(seed)
    from .pack import pack

    encoding = pack("attention_patches.kinds.anystory.encoder").AnyStoryEncoding
    out = []
    for _ in range(count):
        mask = torch.zeros(ref_grid, ref_grid)
        mask[1:, 1:] = 1
        out.append(encoding(torch.randn(81, TXT_DIM, generator=generator), torch.randn(9, TXT_DIM, generator=generator),
                            torch.randn(ref_grid * ref_grid, LATENT_CHANNELS * 4, generator=generator), mask.flatten()))
    return out


def flux_conditioning(seed: int, tokens: int = 6) -> list:
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, tokens, TXT_DIM, generator=generator),
             {"pooled_output": torch.randn(1, POOLED_DIM, generator=generator), "guidance": 3.5}]]


def tiny_siglip(seed: int = 14):
    """A ComfyUI SigLIP vision model (384 px, 27x27 patches) at width SIGLIP_DIM: the sigclip stand-in."""
    config = {"num_channels": 3, "hidden_act": "gelu_pytorch_tanh", "hidden_size": SIGLIP_DIM, "image_size": 384,
              "intermediate_size": SIGLIP_DIM * 2, "model_type": "siglip_vision_model", "num_attention_heads": 2,
              "num_hidden_layers": 2, "patch_size": 14, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}
    model = clip_vision_model(config)
    fill_seeded(model.model, seed)
    return model


def tiny_flux_vae(seed: int = 15):
    """A real ComfyUI VAE with FLUX's 16 latent channels and 8x downscale (TAESD layout): the ae.safetensors stand-in."""
    import comfy.sd
    import comfy.taesd.taesd

    taesd = fill_seeded(comfy.taesd.taesd.TAESD(latent_channels=LATENT_CHANNELS), seed)
    return comfy.sd.VAE(sd=taesd.state_dict())


def tiny_flux_clip(seed: int = 16):
    """FLUX's text encoders (CLIP-L pooled + T5) at the tiny widths: pooled POOLED_DIM, context TXT_DIM."""
    import comfy.sd

    target = comfy.supported_models.Flux(dict(FLUX_CONFIG)).clip_target()
    options = {
        "clip_l_model_config": {"hidden_size": POOLED_DIM, "intermediate_size": POOLED_DIM * 4, "num_attention_heads": 2,
                                "num_hidden_layers": 2, "projection_dim": POOLED_DIM},
        "t5xxl_model_config": {"d_model": TXT_DIM, "d_ff": TXT_DIM * 2, "d_kv": 8, "num_heads": 2, "num_layers": 2},
        "dtype": torch.float32,
    }
    clip = comfy.sd.CLIP(target=target, model_options=options)
    fill_seeded(clip.cond_stage_model, seed)
    return clip
