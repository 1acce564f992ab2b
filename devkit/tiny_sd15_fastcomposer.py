"""Tiny stand-ins for FastComposer: an SD1.5 CLIP, and a FastComposer checkpoint fitted to the tiny SD1.5 UNet.

- SD1.5 CLIP: ComfyUI's SD1ClipModel with the real tokenizer and vocabulary, one 768-wide layer
  (the UNet's context width), seeded weights.
- FastComposer checkpoint: the official key names (``image_encoder.*`` a CLIP ViT at 28 px with
  patch 14 projecting to the UNet's context width; ``postfuse_module.*`` the fusion MLP at that
  width), in the converted layout with the UNet fingerprint of the model it was made for.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

import comfy.clip_model
import comfy.ops
import comfy.sd
import comfy.supported_models
from .pack import pack
from .tiny_models import SD15_UNET_CONFIG, fill_seeded, tiny_sd15_model

EMBED_DIM = SD15_UNET_CONFIG["context_dim"]  # 768, as the real model
VISION = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 28,
          "patch_size": 14, "projection_dim": EMBED_DIM, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
          "num_channels": 3, "model_type": "clip_vision_model"}

loader = pack("models.fastcomposer.loader")
fusion = pack("models.fastcomposer.fusion")


def tiny_sd15_clip(seed: int = 11) -> comfy.sd.CLIP:
    config = {"num_hidden_layers": 1, "hidden_size": EMBED_DIM, "intermediate_size": 64, "num_attention_heads": 12,
              "projection_dim": EMBED_DIM}
    target = comfy.supported_models.SD15(dict(SD15_UNET_CONFIG)).clip_target()
    clip = comfy.sd.CLIP(target=target, model_options={"clip_l_model_config": config, "dtype": torch.float32})
    fill_seeded(clip.cond_stage_model, seed)
    return clip


def tiny_fastcomposer_state_dict(seed: int = 12, unet=None) -> dict[str, torch.Tensor]:
    """Official key names, embeddings as wide as ``unet``'s context; the UNet fingerprint of ``unet`` (a ModelPatcher,
    the tiny SD1.5 UNet of ``tiny_models`` when None)."""
    unet = unet if unet is not None else tiny_sd15_model()
    embed_dim = unet.model.model_config.unet_config["context_dim"]
    config = {**VISION, "projection_dim": embed_dim}
    vision = fill_seeded(comfy.clip_model.CLIPVisionModelProjection(config, torch.float32, "cpu", comfy.ops.manual_cast), seed)
    postfuse = fill_seeded(fusion.PostfuseModule(embed_dim), seed + 1)
    flat = {f"image_encoder.{k}": v.clone() for k, v in vision.state_dict().items()}
    flat.update({f"postfuse_module.{k}": v.clone() for k, v in postfuse.state_dict().items()})
    conv_in = unet.get_model_object("diffusion_model").input_blocks[0][0].weight
    flat[loader.FINGERPRINT_KEY] = loader.unet_fingerprint(conv_in)
    return flat


def save_fastcomposer(path: str | Path, seed: int = 12, unet=None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"format": loader.FORMAT_TAG, "vision_heads": str(VISION["num_attention_heads"])}
    save_file(tiny_fastcomposer_state_dict(seed, unet), str(path), metadata=metadata)
    return path


def tiny_sd15_controlnet(seed: int = 13):
    """ComfyUI's real ControlNet architecture for the tiny SD1.5 UNet (3-channel hint), as ControlNetLoader returns it."""
    import comfy.cldm.cldm
    import comfy.controlnet
    import comfy.model_management as mm

    config = {k: v for k, v in SD15_UNET_CONFIG.items() if k != "out_channels"}
    config.update(num_heads=8, num_head_channels=-1)  # SD15's unet_extra_config
    config.update(hint_channels=3, operations=comfy.ops.disable_weight_init, dtype=torch.float32, device=mm.unet_offload_device())
    control_model = fill_seeded(comfy.cldm.cldm.ControlNet(**config), seed)
    return comfy.controlnet.ControlNet(control_model, load_device=mm.get_torch_device(), manual_cast_dtype=None)
