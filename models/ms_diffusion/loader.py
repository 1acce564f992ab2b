"""Read MS-Diffusion checkpoints (official ``.bin`` or ``.safetensors`` conversions) safely.

Only two readers are ever used: ``safetensors`` and ``torch.load(weights_only=True)``, so a
pickle carrying code is refused. The resampler config is inferred from tensor shapes; the
only thing shapes cannot tell, the head split of the resampler attention, follows the
official convention (64 channels per head) unless the file's metadata says otherwise.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

from ..safe_text import quoted
from .model import MSDiffusionEncoder
from .resampler import ResamplerConfig, fourier_embedding_dim
from ..safe_load import CheckpointError, foreign_format, read_tensors

log = logging.getLogger("comfyui_multisubject.models")

FORMAT_TAG = "ms_diffusion"
DEFAULT_DIM_HEAD = 64
DEFAULT_FOURIER_FREQS = 8

EXPECTED_LAYOUT = (
    "an MS-Diffusion checkpoint holds 'image_proj.*' (the grounded resampler), "
    "'ms_adapter.{i}.to_k_ip.weight' and 'ms_adapter.{i}.to_v_ip.weight' for the cross-attention layers "
    "(odd i = 1..139 for SDXL) and 'dummy_image_tokens', like the official ms_adapter.bin"
)
REQUIRED_RESAMPLER_KEYS = (
    "grounding_latents", "latent_proj.0.weight", "latent_proj.2.weight", "latent_norm.weight",
    "proj_in.weight", "attention_norm.weight", "proj_out.weight", "norm_out.weight",
)
ADAPTER_KEY = re.compile(r"^ms_adapter\.(\d+)\.(to_k_ip|to_v_ip)\.weight$")


class SubjectEncoderFormatError(CheckpointError):
    """The file is not a usable MS-Diffusion checkpoint; the message says why and what to do."""


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Flat ``{key: tensor}`` plus metadata, from ``.safetensors`` or a weights-only pickle."""
    return read_tensors(path, SubjectEncoderFormatError)


def split_state_dict(flat: dict[str, torch.Tensor], name: str = "checkpoint") -> tuple[dict, dict[int, dict], torch.Tensor | None]:
    """(resampler state dict, {layer index: {to_k_ip, to_v_ip}}, dummy tokens) or a named error."""
    resampler = {k[len("image_proj."):]: v for k, v in flat.items() if k.startswith("image_proj.")}
    layers: dict[int, dict[str, torch.Tensor]] = {}
    for key, tensor in flat.items():
        match = ADAPTER_KEY.match(key)
        if match:
            layers.setdefault(int(match.group(1)), {})[match.group(2)] = tensor
    if not resampler or not layers:
        what = foreign_format(flat)
        if what:
            raise SubjectEncoderFormatError(f"{name} is {what}, not an MS-Diffusion subject encoder.")
        raise SubjectEncoderFormatError(f"{name} is not an MS-Diffusion checkpoint: {EXPECTED_LAYOUT}.")
    missing = [k for k in REQUIRED_RESAMPLER_KEYS if k not in resampler]
    if missing:
        raise SubjectEncoderFormatError(f"{name} is incomplete: the resampler lacks {', '.join('image_proj.' + k for k in missing)}.")
    for index, pair in sorted(layers.items()):
        if set(pair) != {"to_k_ip", "to_v_ip"}:
            raise SubjectEncoderFormatError(f"{name} is incomplete: layer {index} has {sorted(pair)} but needs to_k_ip and to_v_ip.")
    return resampler, layers, flat.get("dummy_image_tokens")


def infer_resampler_config(state_dict: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> ResamplerConfig:
    """Config from shapes; heads and Fourier frequencies from metadata or the official convention."""
    metadata = metadata or {}
    dim, embedding_dim = state_dict["proj_in.weight"].shape
    depth = len({k.split(".")[1] for k in state_dict if k.startswith("layers.") and k.endswith(".0.to_q.weight")})
    inner = state_dict["layers.0.0.to_q.weight"].shape[0] if depth else dim
    dim_head = int(metadata.get("resampler_dim_head", DEFAULT_DIM_HEAD if inner % DEFAULT_DIM_HEAD == 0 else inner))
    fourier_freqs = int(metadata.get("fourier_freqs", DEFAULT_FOURIER_FREQS))
    grounding_dim = state_dict["latent_proj.0.weight"].shape[1]
    ff_hidden = state_dict["layers.0.1.1.weight"].shape[0] if depth else dim
    return ResamplerConfig(
        dim=dim,
        depth=depth,
        heads=inner // dim_head,
        dim_head=dim_head,
        num_queries=state_dict["grounding_latents"].shape[1],
        embedding_dim=embedding_dim,
        output_dim=state_dict["proj_out.weight"].shape[0],
        ff_mult=ff_hidden // dim,
        phrase_dim=grounding_dim - fourier_embedding_dim(fourier_freqs),
        fourier_freqs=fourier_freqs,
    )


def build_encoder(flat: dict[str, torch.Tensor], metadata: dict[str, str] | None = None, name: str = "checkpoint") -> MSDiffusionEncoder:
    """An :class:`MSDiffusionEncoder` holding exactly the checkpoint's weights."""
    resampler_sd, layers, _dummy = split_state_dict(flat, name)
    try:
        config = infer_resampler_config(resampler_sd, metadata)
    except (KeyError, IndexError, ValueError, ZeroDivisionError) as e:
        raise SubjectEncoderFormatError(f"{name}: cannot read the resampler configuration ({e}): {EXPECTED_LAYOUT}.") from e
    cross_dims = {pair["to_k_ip"].shape[1] for pair in layers.values()} | {pair["to_v_ip"].shape[1] for pair in layers.values()}
    if cross_dims != {config.output_dim}:
        raise SubjectEncoderFormatError(
            f"{name} is inconsistent: the resampler emits {config.output_dim}-wide tokens but the layers read {sorted(cross_dims)}."
        )
    with torch.device("meta"):  # no second copy of the weights: the checkpoint's tensors are adopted below
        encoder = MSDiffusionEncoder(config, {i: pair["to_k_ip"].shape[0] for i, pair in layers.items()})
    state_dict = {f"image_proj.{k}": v for k, v in resampler_sd.items()}
    state_dict.update({f"ms_adapter.{i}.{proj}.weight": t for i, pair in layers.items() for proj, t in pair.items()})
    try:
        encoder.load_state_dict(state_dict, strict=True, assign=True)
    except RuntimeError as e:
        raise SubjectEncoderFormatError(f"{name} does not match the MS-Diffusion architecture: {e}") from e
    return encoder.eval().requires_grad_(False)


def load_encoder(path: str | Path) -> MSDiffusionEncoder:
    flat, metadata = read_checkpoint(path)
    encoder = build_encoder(flat, metadata, quoted(Path(path).name))
    log.info("loaded MS-Diffusion encoder %s: %d layers, %s", quoted(Path(path).name), len(encoder.layer_indices), encoder.config)
    return encoder
