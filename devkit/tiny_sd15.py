"""Tiny random-weight SD1.5 stand-ins with the real architectures and key layouts, for SSR-Encoder.

- SD1.5 UNet: ComfyUI's SD15 model class with SD1.5's exact block topology (16 cross-attentions,
  8 heads) at small widths and a small context width.
- SD1.5 CLIP: ComfyUI's SD1ClipModel (the real tokenizer) with 3 layers, as wide as the context.
- CLIP-Vision shaped like ViT-L/14 at 224: 24 layers, 257 tokens, small width.
- SSR-Encoder checkpoints: the aligner and the 16 layers, with the released keys (ssr_manifest.json)
  and shapes scaled to these widths, saved in either layout.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

import comfy.clip_vision
import comfy.sd
import comfy.supported_models
from .pack import pack
from .tiny_models import _tiny_unet, clip_vision_model, fill_seeded

TEXT_WIDTH = 32  # SD1.5: 768
VIT_L_WIDTH = 16  # ViT-L/14: 1024
ALIGNER_INNER = 64  # SSR: 512
MODEL_CHANNELS = 32  # SD1.5: 320
REAL_TO_TINY = {768: TEXT_WIDTH, 1024: VIT_L_WIDTH, 512: ALIGNER_INNER, 320: MODEL_CHANNELS,
                640: 2 * MODEL_CHANNELS, 1280: 4 * MODEL_CHANNELS}

SD15_TINY_UNET_CONFIG = {
    "model_channels": MODEL_CHANNELS, "channel_mult": [1, 2, 4, 4], "num_res_blocks": [2, 2, 2, 2],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "transformer_depth_middle": 1, "context_dim": TEXT_WIDTH, "num_heads": 8, "use_linear_in_transformer": False,
    "adm_in_channels": None, "in_channels": 4, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
    "image_size": 32, "use_temporal_attention": False, "use_temporal_resblock": False, "use_checkpoint": False,
}


def tiny_sd15_unet(seed: int = 20):
    return _tiny_unet(comfy.supported_models.SD15(dict(SD15_TINY_UNET_CONFIG)), seed)


def tiny_sd15_clip(seed: int = 21) -> comfy.sd.CLIP:
    target = comfy.supported_models.SD15(dict(SD15_TINY_UNET_CONFIG)).clip_target()
    options = {"clip_l_model_config": {"hidden_size": TEXT_WIDTH, "intermediate_size": TEXT_WIDTH * 4,
                                       "num_attention_heads": 2, "num_hidden_layers": 3, "projection_dim": TEXT_WIDTH},
               "dtype": torch.float32}
    clip = comfy.sd.CLIP(target=target, model_options=options)
    fill_seeded(clip.cond_stage_model, seed)
    return clip


def clip_vision_from_config(config: dict, state_dict: dict | None = None, seed: int = 22) -> comfy.clip_vision.ClipVisionModel:
    """ComfyUI's ClipVisionModel from an HF-style config; the given HF-layout weights, else seeded ones."""
    full = {"model_type": "clip_vision_model", "num_channels": 3, "attention_dropout": 0.0, "dropout": 0.0,
            "initializer_factor": 1.0, "initializer_range": 0.02, "torch_dtype": "float32", **config}
    model = clip_vision_model(full)
    model.model.to(torch.float32)  # ComfyUI keeps CLIP vision in fp16 on the CPU; parity is checked in fp32
    model.dtype = torch.float32
    if state_dict is None:
        fill_seeded(model.model, seed)
    else:
        missing, unexpected = model.load_sd(state_dict)
        assert not [k for k in missing if not k.startswith("visual_projection")] and not unexpected, (missing, unexpected)
    return model


def tiny_vit_l(seed: int = 22, width: int = VIT_L_WIDTH, layers: int = 24, image_size: int = 224):
    return clip_vision_from_config({"hidden_size": width, "intermediate_size": width * 2, "num_hidden_layers": layers,
                                    "num_attention_heads": 2, "image_size": image_size, "patch_size": 14,
                                    "projection_dim": width, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}, seed=seed)


def manifest_state_dict(shapes: dict[str, list[int]], seed: int, dims: dict[int, int] | None = None) -> dict[str, torch.Tensor]:
    """Seeded tensors under exactly the manifest's keys, each real dimension mapped to its tiny size."""
    dims = REAL_TO_TINY if dims is None else dims
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in sorted(shapes.items()):
        tiny_shape = [dims.get(d, d) for d in shape]
        if key.endswith("norm.weight"):
            out[key] = torch.ones(tiny_shape) + 0.1 * torch.randn(tiny_shape, generator=generator)
        elif len(tiny_shape) == 1:
            out[key] = 0.1 * torch.randn(tiny_shape, generator=generator)
        else:
            out[key] = torch.randn(tiny_shape, generator=generator) / tiny_shape[-1] ** 0.5
    return out


OFFICIAL = ("pytorch_model.bin", "pytorch_model_1.bin")
COMMUNITY_FILES = ("ssr_aligner.safetensors", "ssr_attentions.safetensors")
MANIFEST_ENTRY = {"pytorch_model.bin": "pytorch_model.bin", "pytorch_model_1.bin": "pytorch_model_1.bin",
                  "ssr_aligner.safetensors": "logtd/ssr_encoder ssr_aligner.safetensors",
                  "ssr_attentions.safetensors": "logtd/ssr_encoder ssr_attentions.safetensors"}


def save_ssr_files(folder: str | Path, manifest: dict, layout: str = "official", seed: int = 23,
                   names: tuple[str, str] | None = None, dims: dict[int, int] | None = None) -> tuple[Path, Path]:
    """Write the aligner and layers files (``layout`` 'official' .bin pair or 'community' .safetensors pair)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    released = OFFICIAL if layout == "official" else COMMUNITY_FILES
    paths = []
    for offset, (released_name, name) in enumerate(zip(released, names or released)):
        state = manifest_state_dict(manifest[MANIFEST_ENTRY[released_name]]["keys"], seed + offset, dims)
        path = folder / name
        if path.suffix == ".safetensors":
            save_file(state, str(path))
        else:
            torch.save(state, str(path))
        paths.append(path)
    return paths[0], paths[1]


def ssr_manifest(golden=None) -> dict:
    """The released keys and shapes: the golden set's ssr_manifest.json, or the same tables built from the pack's layer map."""
    if golden is not None:
        return json.loads((golden.path / "ssr_manifest.json").read_text())
    layers = pack("attention_patches.kinds.ssr_encoder.layer_map").SD15_LAYERS
    official = {"aligner.to_q.weight": [512, 768], "aligner.to_k.weight": [512, 1024], "norm.weight": [768], "norm.bias": [768]}
    for i in range(6):
        official[f"aligner.processor.to_v.{i}.weight"] = [512, 1024]
        official[f"aligner.processor.to_out.{i}.weight"] = [768, 512]
    community = {k.replace("aligner.processor.", "").replace("aligner.", ""): v for k, v in official.items()}
    layer_keys = {f"{n}.{p}.weight": [320 * layer.width_mult, 768] for n, layer in layers.items() for p in ("to_k_SSR", "to_v_SSR")}
    return {"pytorch_model.bin": {"keys": official}, "pytorch_model_1.bin": {"keys": layer_keys},
            MANIFEST_ENTRY["ssr_aligner.safetensors"]: {"keys": community},
            MANIFEST_ENTRY["ssr_attentions.safetensors"]: {"keys": layer_keys}}


def ssr_kind():
    return pack("attention_patches.kinds.ssr_encoder").SSREncoder
