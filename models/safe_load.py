"""Read tensor checkpoints without ever running code from them.

``.safetensors`` through safetensors, pickles only through ``torch.load(weights_only=True)``;
nested dicts are flattened to dotted keys.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt"}
SAFETENSORS_SUFFIX = ".safetensors"
# What a file is when its keys start like this, for errors that tell users where it belongs.
FOREIGN_FORMATS = (
    ("ip_adapter.", "an IP-Adapter model (load it with an IP-Adapter pack)"),
    ("model.diffusion_model.", "a Stable Diffusion checkpoint; put it in models/checkpoints"),
    ("vision_model.", "a CLIP-Vision model; put it in models/clip_vision and load it with Load CLIP Vision"),
    ("visual.", "a CLIP-Vision model; put it in models/clip_vision and load it with Load CLIP Vision"),
    ("lora_unet_", "a LoRA; load it with a LoRA loader"),
)


class CheckpointError(ValueError):
    """A file that cannot be read as a plain tensor checkpoint."""


def read_tensors(path: str | Path, error: type[CheckpointError] = CheckpointError) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Flat ``{key: tensor}`` and the metadata (safetensors only) of ``path``."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == SAFETENSORS_SUFFIX:
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
        except (SafetensorError, OSError, ValueError) as e:
            raise error(f"{path.name} is truncated or not a valid .safetensors file ({e}). Download it again.") from e
    if suffix not in PICKLE_SUFFIXES:
        raise error(f"{path.name}: unsupported file type '{suffix}'; use .safetensors or a PyTorch .bin/.pth file")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise error(
            f"{path.name} was refused: it contains Python objects other than tensors, and only plain tensor "
            "checkpoints are loaded (torch.load with weights_only=True). Use the official file or a .safetensors "
            "conversion from a source you trust."
        ) from e
    except (EOFError, RuntimeError, zipfile.BadZipFile, OSError) as e:
        raise error(f"{path.name} is truncated or corrupt ({e}). Download it again.") from e
    if not isinstance(obj, dict):
        raise error(f"{path.name} holds a {type(obj).__name__}, not a dict of tensors")
    return flatten(obj), {}


def read_keys(path: str | Path, error: type[CheckpointError] = CheckpointError) -> frozenset[str]:
    """The flat tensor keys of ``path``, to recognise what a file is before loading it."""
    path = Path(path)
    if path.suffix.lower() == SAFETENSORS_SUFFIX:
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                return frozenset(f.keys())
        except (SafetensorError, OSError, ValueError) as e:
            raise error(f"{path.name} is truncated or not a valid .safetensors file ({e}). Download it again.") from e
    return frozenset(read_tensors(path, error)[0])


def foreign_format(keys) -> str | None:
    """What kind of other model a file with these keys is, or None."""
    for prefix, what in FOREIGN_FORMATS:
        if any(k.startswith(prefix) for k in keys):
            return what
    return None


def flatten(obj: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    flat: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        elif isinstance(value, torch.Tensor):
            flat[f"{prefix}{key}"] = value
    return flat
