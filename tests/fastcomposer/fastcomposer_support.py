"""Shared builders of the FastComposer tests: the pack's modules loaded from official-layout weights."""

from __future__ import annotations

import torch

import comfy.sd
import comfy.supported_models
from devkit.pack import pack

loader = pack("models.fastcomposer.loader")
SD1_VOCAB = 49408
encoder_mod = pack("attention_patches.kinds.fastcomposer.encoder")


def fastcomposer_encoder(flat: dict[str, torch.Tensor], heads: int, object_resolution: int, name: str = "golden"):
    """The pack's FastComposer encoder holding ``flat`` (official key names), its vision tower in fp32 on the CPU."""
    weights = loader.split_checkpoint(flat, {"vision_heads": str(heads)}, name)
    encoder = encoder_mod.FastComposerEncoder(name, weights, object_resolution)
    encoder.image_encoder.float()
    return encoder


def sd15_clip(text_encoder: dict[str, torch.Tensor], heads: int) -> comfy.sd.CLIP:
    """ComfyUI's SD1.5 CLIP (layer "last") holding an official ``text_encoder.*`` state dict (no ``text_model.`` level)."""
    config = {
        "hidden_size": text_encoder["embeddings.token_embedding.weight"].shape[1],
        "intermediate_size": text_encoder["encoder.layers.0.mlp.fc1.weight"].shape[0],
        "num_hidden_layers": len({k.split(".")[2] for k in text_encoder if k.startswith("encoder.layers.")}),
        "num_attention_heads": heads,
        "projection_dim": text_encoder["embeddings.token_embedding.weight"].shape[1],
    }
    target = comfy.supported_models.SD15({"context_dim": 768}).clip_target()
    clip = comfy.sd.CLIP(target=target, model_options={"clip_l_model_config": config, "dtype": torch.float32})
    state = {f"text_model.{k}": v for k, v in text_encoder.items() if not k.endswith("position_ids")}
    vocab = state["text_model.embeddings.token_embedding.weight"]
    if vocab.shape[0] < SD1_VOCAB:  # ComfyUI's CLIP always has the full vocabulary; unused rows stay zero
        state["text_model.embeddings.token_embedding.weight"] = torch.cat([vocab, vocab.new_zeros(SD1_VOCAB - vocab.shape[0], vocab.shape[1])])
    missing, unexpected = clip.load_sd(state)
    assert not unexpected and all("text_projection" in k or "logit_scale" in k for k in missing), (missing, unexpected)
    return clip


def encode_ids(clip: comfy.sd.CLIP, ids: list[int]) -> torch.Tensor:
    """[1, T, D] CLIP output of explicit token ids, through ComfyUI's encoder."""
    return clip.encode_from_tokens({"l": [[(int(i), 1.0) for i in ids]]})
