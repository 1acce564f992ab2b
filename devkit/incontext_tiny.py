"""Tiny Qwen-Image(-Edit) and FLUX.2 stand-ins: ComfyUI's own model classes at tiny widths, seeded weights.

Their state dicts have the real key layouts, so ComfyUI's model detection recognises them (checked in
the tests); the widths are set directly because detection fills the full-size defaults.
"""

from __future__ import annotations

import torch

import comfy.model_management as mm
import comfy.model_patcher
import comfy.supported_models

from .tiny_models import fill_seeded

QWEN_TXT_DIM = 32
QWEN_CONFIG = {
    "image_model": "qwen_image", "in_channels": 64, "out_channels": 16, "num_layers": 2, "attention_head_dim": 16,
    "num_attention_heads": 2, "joint_attention_dim": QWEN_TXT_DIM, "axes_dims_rope": (4, 6, 6),
}
FLUX2_TXT_DIM = 48
FLUX2_CHANNELS = 128
FLUX2_CONFIG = {
    "image_model": "flux2", "in_channels": FLUX2_CHANNELS, "out_channels": FLUX2_CHANNELS, "patch_size": 1, "vec_in_dim": None,
    "context_in_dim": FLUX2_TXT_DIM, "hidden_size": 32, "mlp_ratio": 3.0, "num_heads": 2, "depth": 1, "depth_single_blocks": 1,
    "axes_dim": [4, 4, 4, 4], "theta": 2000, "qkv_bias": False, "guidance_embed": True, "global_modulation": True,
    "mlp_silu_act": True, "ops_bias": False, "default_ref_method": "index", "ref_index_scale": 10.0,
}


def _patcher(config, seed: int, dtype: torch.dtype):
    config.set_inference_dtype(dtype, None)
    model = config.get_model({})
    fill_seeded(model.diffusion_model, seed)
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())


def tiny_qwen_image(seed: int = 31, dtype: torch.dtype = torch.float32, layers: int = 2):
    """ComfyUI's Qwen-Image (supported_models.QwenImage; the Edit-2509 model has the same classes and keys)."""
    return _patcher(comfy.supported_models.QwenImage(dict(QWEN_CONFIG, num_layers=layers)), seed, dtype)


def tiny_flux2(seed: int = 32, dtype: torch.dtype = torch.float32, double: int = 1, single: int = 1):
    """ComfyUI's FLUX.2 [dev] (supported_models.Flux2: 4 RoPE axes, theta 2000, index references x10, patch 1)."""
    return _patcher(comfy.supported_models.Flux2(dict(FLUX2_CONFIG, depth=double, depth_single_blocks=single)), seed, dtype)


def seeded(seed: int, *shape) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def qwen_conditioning(seed: int, text_tokens: int, ref_sizes: list[tuple[int, int]]) -> list:
    """A Qwen-Image-Edit conditioning as TextEncodeQwenImageEditPlus leaves it: context + raw reference latents."""
    refs = [seeded(seed + 1 + i, 1, 16, 1, h // 8, w // 8) for i, (h, w) in enumerate(ref_sizes)]
    return [[seeded(seed, 1, text_tokens, QWEN_TXT_DIM), {"reference_latents": refs} if refs else {}]]


def flux2_conditioning(seed: int, text_tokens: int, ref_sizes: list[tuple[int, int]], guidance: float = 4.0) -> list:
    """A FLUX.2 conditioning after ReferenceLatent nodes: unpadded context (the model pads to 512) + latents."""
    refs = [seeded(seed + 1 + i, 1, FLUX2_CHANNELS, h // 16, w // 16) for i, (h, w) in enumerate(ref_sizes)]
    extra = {"guidance": guidance, "pooled_output": None}
    if refs:
        extra["reference_latents"] = refs
    return [[seeded(seed, 1, text_tokens, FLUX2_TXT_DIM), extra]]


def tiny_qwen_edit_clip(seed: int = 33):
    """Qwen2.5-VL 7B (ComfyUI's QwenImage text encoder, vision tower included) at tiny widths: the real tokenizer,
    template stripping and vision-token expansion of TextEncodeQwenImageEditPlus."""
    from functools import partial
    from unittest import mock

    import comfy.sd
    import comfy.text_encoders.qwen_vl as qwen_vl

    target = comfy.supported_models.QwenImage(dict(QWEN_CONFIG)).clip_target()
    options = {"qwen25_7b_model_config": {"hidden_size": QWEN_TXT_DIM, "intermediate_size": 64, "num_hidden_layers": 2,
                                          "num_attention_heads": 2, "num_key_value_heads": 1},
               "dtype": torch.float32}
    tiny_vision = partial(qwen_vl.Qwen2VLVisionTransformer, intermediate_size=64, num_heads=2, num_layers=2)
    with mock.patch.object(qwen_vl, "Qwen2VLVisionTransformer", lambda hidden_size, **kw: tiny_vision(hidden_size=32, **kw)):
        clip = comfy.sd.CLIP(target=target, model_options=options)
    fill_seeded(clip.cond_stage_model, seed)
    return clip


MISTRAL_SPECIALS = ("<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]",
                    "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]", "[IMG_END]", "[PREFIX]", "[MIDDLE]",
                    "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[TOOL_CONTENT]")


def tiny_tekken() -> bytes:
    """A byte-level tekken vocabulary (Mistral's format, the real special tokens): what the text-encoder file carries."""
    import base64
    import json

    vocab = [{"rank": i, "token_bytes": base64.b64encode(bytes([i])).decode()} for i in range(256)]
    specials = [{"rank": i, "token_str": t, "is_control": True} for i, t in enumerate(MISTRAL_SPECIALS)]
    size = len(vocab) + len(specials)
    return json.dumps({"config": {"default_vocab_size": size, "pattern": ".", "num_vocab_tokens": size},
                       "vocab": vocab, "special_tokens": specials}).encode()


def tiny_flux2_clip(seed: int = 35):
    """FLUX.2's text encoder (ComfyUI's Mistral-3 with layers 10/20/30 stacked, Flux2Tokenizer's template) at a tiny width
    and a tiny vocabulary: context width 3 x 16 = FLUX2_TXT_DIM."""
    import comfy.sd
    import comfy.supported_models_base
    import comfy.text_encoders.flux

    target = comfy.supported_models_base.ClipTarget(comfy.text_encoders.flux.Flux2Tokenizer, comfy.text_encoders.flux.flux2_te())
    options = {"mistral3_24b_model_config": {"vocab_size": 256 + len(MISTRAL_SPECIALS), "hidden_size": FLUX2_TXT_DIM // 3,
                                             "intermediate_size": 32, "num_hidden_layers": 31, "num_attention_heads": 2,
                                             "num_key_value_heads": 1},
               "dtype": torch.float32}
    clip = comfy.sd.CLIP(target=target, model_options=options, tokenizer_data={"tekken_model": tiny_tekken()})
    fill_seeded(clip.cond_stage_model, seed)
    return clip


class PatchVAE(torch.nn.Module):
    """One strided convolution each way: a VAE network fast enough for 1 MP references on a CPU (TAESD takes tens of
    seconds there); ``frames``: 5-D [B, C, T, H, W] latents as the Wan 2.1 VAE (Qwen-Image) gives them."""

    def __init__(self, channels: int, factor: int, frames: bool, seed: int):
        super().__init__()
        self.frames = frames
        self.down = torch.nn.Conv2d(3, channels, factor, stride=factor)
        self.up = torch.nn.ConvTranspose2d(channels, 3, factor, stride=factor)
        fill_seeded(self, seed)

    def encode(self, x):
        if self.frames:
            return torch.stack([self.down(x[:, :, t]) for t in range(x.shape[2])], dim=2)
        return self.down(x)

    def decode(self, z, **kwargs):
        if self.frames:
            return torch.stack([self.up(z[:, :, t]) for t in range(z.shape[2])], dim=2)
        return self.up(z)


def tiny_qwen_vae(seed: int = 34):
    """Qwen-Image's VAE as ComfyUI sets it up (the Wan 2.1 VAE's detection: 5-D latents, 16 channels, 8x), its network
    a :class:`PatchVAE`."""
    import comfy.ldm.wan.vae
    import comfy.sd

    wan = comfy.ldm.wan.vae.WanVAE(dim=4, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                                   temperal_downsample=[False, True, True], dropout=0.0)
    vae = comfy.sd.VAE(sd=wan.state_dict())
    vae.first_stage_model = PatchVAE(16, 8, True, seed)
    return vae


def tiny_flux2_vae(seed: int = 36):
    """FLUX.2's VAE interface (128 channels at 1/16 of the pixels), its network a :class:`PatchVAE`."""
    import comfy.sd
    import comfy.taesd.taesd

    vae = comfy.sd.VAE(sd=comfy.taesd.taesd.TAESD(latent_channels=16).state_dict())
    vae.first_stage_model = PatchVAE(FLUX2_CHANNELS, 16, False, seed)
    vae.latent_channels, vae.downscale_ratio, vae.upscale_ratio = FLUX2_CHANNELS, 16, 16
    return vae
