"""Read FastComposer checkpoints safely: the official ``pytorch_model.bin`` or the pack's conversions.

The official file is one pickle (4.52 GB) of an OrderedDict with the prefixes ``unet.``,
``image_encoder.``, ``text_encoder.``, ``vae.`` and ``postfuse_module.``; it is read with
``torch.load(weights_only=True)`` only, so a pickle carrying code is refused. A DDP/accelerate
``module.`` prefix on every key is removed. The subject encoder needs only the fine-tuned
image encoder (``image_encoder.*``, CLIP ViT-L/14 whose last two layers were trained) and the
fusion MLP; the fine-tuned UNet is loaded as a MODEL (see ``convert.py``); the text encoder is
the frozen SD1.5 CLIP-L and the VAE is unused at inference, so both are dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..safe_load import CheckpointError, read_tensors, require_floating
from .fusion import PostfuseModule

FORMAT_TAG = "fastcomposer"
DDP_PREFIX = "module."
IMAGE_ENCODER_PREFIX = "image_encoder."
POSTFUSE_PREFIX = "postfuse_module."
UNET_PREFIX = "unet."
FINGERPRINT_KEY = "unet_fingerprint"  # a slice of the fine-tuned UNet, to tell it from a stock SD1.5 UNet
FINGERPRINT_SOURCE = "conv_in.weight"  # diffusers name; ComfyUI's is input_blocks.0.0.weight
FINGERPRINT_SIZE = 64
VISION_HEAD_WIDTH = 64  # ViT-L/14: 1024 wide, 16 heads
POSITION_IDS = "vision_model.embeddings.position_ids"
RECOGNISED_KEYS = (POSTFUSE_PREFIX + "mlp1.fc1.weight", IMAGE_ENCODER_PREFIX + "visual_projection.weight")
EXPECTED_LAYOUT = (
    "a FastComposer checkpoint holds 'image_encoder.vision_model.*', 'image_encoder.visual_projection.weight' and "
    "'postfuse_module.*' (the official pytorch_model.bin from Hugging Face mit-han-lab/fastcomposer, or "
    "fastcomposer_encoder.safetensors written by scripts/convert_fastcomposer.py)"
)


class FastComposerFormatError(CheckpointError):
    """The file is not a usable FastComposer checkpoint; the message says why and what to do."""


def strip_ddp_prefix(flat: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys saved from a DistributedDataParallel wrapper all start with 'module.'; the official load needs plain keys."""
    if flat and all(k.startswith(DDP_PREFIX) for k in flat):
        return {k[len(DDP_PREFIX):]: v for k, v in flat.items()}
    return flat


def is_fastcomposer(keys) -> bool:
    keys = set(keys)
    return all(k in keys or DDP_PREFIX + k in keys for k in RECOGNISED_KEYS)


def with_prefix(flat: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)}


def vision_config(state_dict: dict[str, torch.Tensor], heads: int | None = None) -> dict:
    """The CLIP vision config (ComfyUI's / transformers' names) of an ``image_encoder.*`` state dict, from shapes.

    Only the head count is not in the shapes: ``heads`` or the ViT-L convention of 64 channels per head.
    """
    hidden = state_dict["vision_model.embeddings.class_embedding"].shape[0]
    patch = state_dict["vision_model.embeddings.patch_embedding.weight"].shape[-1]
    positions = state_dict["vision_model.embeddings.position_embedding.weight"].shape[0]
    grid = math.isqrt(positions - 1)
    if grid * grid != positions - 1:
        raise ValueError(f"{positions} position embeddings is not a square grid plus the class token")
    indices = {k.split(".")[3] for k in state_dict if k.startswith("vision_model.encoder.layers.")}
    layers = len(indices)
    if indices != {str(i) for i in range(layers)}:
        raise ValueError(f"the image encoder's layers are numbered {sorted(indices, key=len)[:6]}, not 0 to {layers - 1}")
    heads = max(1, hidden // VISION_HEAD_WIDTH) if heads is None else heads
    if not 0 < heads <= hidden or hidden % heads:
        raise ValueError(f"vision_heads = {heads} does not split the {hidden}-wide image encoder into equal heads")
    return {
        "hidden_size": hidden,
        "intermediate_size": state_dict["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "image_size": grid * patch,
        "patch_size": patch,
        "projection_dim": state_dict["visual_projection.weight"].shape[0],
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "num_channels": 3,
        "model_type": "clip_vision_model",
    }


def build_postfuse(state_dict: dict[str, torch.Tensor], name: str = "checkpoint") -> PostfuseModule:
    try:
        embed_dim = state_dict["layer_norm.weight"].shape[0]
        module = PostfuseModule(embed_dim)
        module.load_state_dict({k: v.float() for k, v in state_dict.items()}, strict=True)
    except (KeyError, RuntimeError) as e:
        raise FastComposerFormatError(f"{name}: the fusion MLP 'postfuse_module.*' does not match FastComposer's ({e})") from e
    return module.eval().requires_grad_(False)


@dataclass(frozen=True, eq=False)
class FastComposerWeights:
    """What the subject encoder needs from a FastComposer checkpoint."""

    image_encoder: dict[str, torch.Tensor]  # ComfyUI CLIP vision names, position_ids dropped, stored dtypes
    vision: dict  # vision_config of image_encoder
    postfuse: PostfuseModule
    unet_fingerprint: torch.Tensor | None  # [FINGERPRINT_SIZE] float32, or None when the file has none


def unet_fingerprint(conv_in_weight: torch.Tensor) -> torch.Tensor:
    return conv_in_weight.detach().flatten()[:FINGERPRINT_SIZE].float().clone()


def split_checkpoint(flat: dict[str, torch.Tensor], metadata: dict[str, str] | None = None,
                     name: str = "checkpoint") -> FastComposerWeights:
    """The subject-encoder parts of an official or converted checkpoint, or a named error."""
    flat = strip_ddp_prefix(flat)
    if not is_fastcomposer(flat):
        raise FastComposerFormatError(f"{name} is not a FastComposer checkpoint: {EXPECTED_LAYOUT}.")
    image_encoder = with_prefix(flat, IMAGE_ENCODER_PREFIX)
    image_encoder.pop(POSITION_IDS, None)  # a buffer older transformers saved; ComfyUI's model has none
    require_floating({**image_encoder, **with_prefix(flat, POSTFUSE_PREFIX)}, name, FastComposerFormatError, "FastComposer",
                     "use the official pytorch_model.bin or a conversion by scripts/convert_fastcomposer.py.")
    heads = (metadata or {}).get("vision_heads")
    try:
        config = vision_config(image_encoder, int(str(heads)[:20]) if heads else None)
    except (KeyError, IndexError, ValueError) as e:
        raise FastComposerFormatError(f"{name}: cannot read the image encoder's configuration ({e}): {EXPECTED_LAYOUT}.") from e
    postfuse = build_postfuse(with_prefix(flat, POSTFUSE_PREFIX), name)
    if config["projection_dim"] != postfuse.embed_dim:
        raise FastComposerFormatError(
            f"{name} is inconsistent: the image encoder emits {config['projection_dim']}-wide embeddings "
            f"but the fusion MLP fuses {postfuse.embed_dim}-wide ones."
        )
    if FINGERPRINT_KEY in flat:
        fingerprint = flat[FINGERPRINT_KEY].float()
    elif UNET_PREFIX + FINGERPRINT_SOURCE in flat:
        fingerprint = unet_fingerprint(flat[UNET_PREFIX + FINGERPRINT_SOURCE])
    else:
        fingerprint = None
    return FastComposerWeights(image_encoder, config, postfuse, fingerprint)


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Flat ``{key: tensor}`` (``module.`` prefix removed) plus metadata, from .safetensors or a weights-only pickle."""
    flat, metadata = read_tensors(path, FastComposerFormatError)
    return strip_ddp_prefix(flat), metadata


def load_weights(path: str | Path) -> FastComposerWeights:
    flat, metadata = read_checkpoint(path)
    return split_checkpoint(flat, metadata, Path(path).name)
