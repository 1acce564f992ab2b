"""What SSR-Encoder needs from ComfyUI's models: CLIP-Vision layer outputs and the query's text embedding.

ComfyUI's ``encode_image`` gives only the penultimate layer and preprocesses with
``clip_preprocess``; SSR needs the outputs of layers 4, 8, ..., 24 (no post-LayerNorm) of the
official pixels, so the vision tower is run here on pixels from ``models.ssr_encoder.preprocess``.
"""

from __future__ import annotations

import math

import torch

import comfy.clip_model
import comfy.model_management as mm

from ...references import image_encoder_family
from ..base import SubjectSetupError, missing_clip_message

VIT_L_LAYERS = 24
LAYER_STRIDE = 4  # outputs of layers 4, 8, ..., 24
CLIP_TOKENS = 257  # 224 px, patch 14: CLS + 16 x 16
QUERY_TOKENS = 77  # the official tokenizer truncates the query to one CLIP window
MAX_QUERY_CHARS = 2000
NEEDS_CLIP = "SSR-Encoder encodes the query (the words that pick the subject) with the SD1.5 checkpoint's CLIP"

VIT_L_NEEDED = ("SSR-Encoder needs the CLIP-ViT-L/14 vision model at 224 px (openai clip-vit-large-patch14, e.g. "
                "clip_vision_vit_l.safetensors / model.safetensors of that repo) in models/clip_vision, loaded with Load CLIP Vision")


def vision_tower(clip_vision, feature_dim: int):
    """The ComfyUI CLIP vision model inside ``clip_vision``, checked to be a ViT-L/14 at 224 px."""
    model = getattr(clip_vision, "model", None)
    if not isinstance(model, comfy.clip_model.CLIPVisionModelProjection):
        raise SubjectSetupError(f"the connected image encoder is not a CLIP vision model. {VIT_L_NEEDED}")
    vision = model.vision_model
    tokens, width = vision.embeddings.position_embedding.weight.shape
    layers = len(vision.encoder.layers)
    if width != feature_dim:
        raise SubjectSetupError(f"the connected CLIP vision model is {image_encoder_family(width)} ({width}-wide); "
                                f"this SSR-Encoder reads {image_encoder_family(feature_dim)} features. {VIT_L_NEEDED}")
    if tokens != CLIP_TOKENS or getattr(clip_vision, "image_size", 224) != 224:
        raise SubjectSetupError(f"the connected CLIP vision model has {tokens} tokens (a 336-px ViT-L has 577); "
                                f"SSR-Encoder was trained on {CLIP_TOKENS} (224 px). {VIT_L_NEEDED}")
    if layers != VIT_L_LAYERS:
        raise SubjectSetupError(f"the connected CLIP vision model has {layers} layers; SSR-Encoder reads layers "
                                f"4, 8, ..., 24 of the 24-layer ViT-L/14. {VIT_L_NEEDED}")
    return model


def patch_grid(clip_vision) -> int:
    """Side of the CLIP patch grid (16 for ViT-L/14 at 224)."""
    return math.isqrt(clip_vision.model.vision_model.embeddings.position_embedding.weight.shape[0] - 1)


@torch.no_grad()
def clip_layer_features(clip_vision, pixels: torch.Tensor, feature_dim: int) -> torch.Tensor:
    """[V, 6*257, C] float32: outputs of layers 4, 8, ..., 24 of CLIP pixels [V, 3, 224, 224], concatenated along tokens."""
    model = vision_tower(clip_vision, feature_dim)
    mm.load_model_gpu(clip_vision.patcher)
    out = model(pixel_values=pixels.to(clip_vision.load_device).float(), intermediate_output="all")
    hidden = out[1]  # [V, layers, tokens, C], each layer's output cloned by ComfyUI (its layers add in place)
    picked = hidden[:, LAYER_STRIDE - 1::LAYER_STRIDE]
    return picked.flatten(1, 2).to(mm.intermediate_device(), torch.float32)


@torch.no_grad()
def query_embedding(clip, text: str, query_dim: int) -> torch.Tensor:
    """[1, 77, D] float32: ``text`` through the CLIP's text encoder at its last layer (after the final LayerNorm).

    The CLIP is cloned with its layer reset, so a CLIP Set Last Layer upstream does not change the query.
    """
    if clip is None:
        raise SubjectSetupError(missing_clip_message(NEEDS_CLIP, "SD1.5"))
    last_layer = clip.clone()
    last_layer.clip_layer(None)
    cond = last_layer.encode_from_tokens(last_layer.tokenize(text[:MAX_QUERY_CHARS]))
    if cond.shape[-1] != query_dim:
        raise SubjectSetupError(f"the connected CLIP encodes text {cond.shape[-1]} wide, SSR-Encoder reads SD1.5's "
                                f"{query_dim}-wide CLIP-L text: connect the SD1.5 checkpoint's CLIP to Encode Reference")
    return cond[:, :QUERY_TOKENS].to(mm.intermediate_device(), torch.float32)
