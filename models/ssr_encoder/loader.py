"""Read SSR-Encoder's two checkpoint files, in either released layout, and find a file's partner.

- official (Google Drive): ``pytorch_model.bin`` (aligner, keys ``aligner.*`` / ``norm.*``) and
  ``pytorch_model_1.bin`` (16 layers, ``{n}.to_k_SSR.weight`` / ``{n}.to_v_SSR.weight``);
- community (HF ``logtd/ssr_encoder``): ``ssr_aligner.safetensors`` (the aligner keys without
  the ``aligner.`` / ``aligner.processor.`` prefixes) and ``ssr_attentions.safetensors`` (the
  layer keys unchanged; its example workflow calls it ``ssr_layers.safetensors``).

Each file is recognised by its keys, never by its name; names only decide where to look first
for the partner. Pickles are read with ``torch.load(weights_only=True)`` only.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..safe_text import printable
from ..safe_load import PICKLE_SUFFIXES, SAFETENSORS_SUFFIX, CheckpointError, read_keys, read_tensors, require_floating
from .aligner import ALIGNER_HEADS, CLIP_DEPTHS, SSRAligner
from .layers import SSRLayers

log = logging.getLogger("comfyui_multisubject.models.ssr_encoder")

ALIGNER = "aligner"
LAYERS = "layers"
LAYER_KEY = re.compile(r"^(\d+)\.(to_k_SSR|to_v_SSR)\.weight$")
OFFICIAL_ALIGNER_PREFIXES = ("aligner.processor.", "aligner.")
DDP_PREFIX = "module."
KNOWN_PARTNERS = {  # file name -> names its partner is released under, most likely first
    "pytorch_model.bin": ("pytorch_model_1.bin",),
    "pytorch_model_1.bin": ("pytorch_model.bin",),
    "ssr_aligner.safetensors": ("ssr_attentions.safetensors", "ssr_layers.safetensors"),
    "ssr_attentions.safetensors": ("ssr_aligner.safetensors",),
    "ssr_layers.safetensors": ("ssr_aligner.safetensors",),
}
ROLE_NAMES = {
    ALIGNER: "aligner (pytorch_model.bin or ssr_aligner.safetensors)",
    LAYERS: "attention layers (pytorch_model_1.bin or ssr_attentions.safetensors)",
}
MAX_PARTNER_CANDIDATES = 32  # bounded work when the partner has an unknown name


class SSRFormatError(CheckpointError):
    """Not a usable SSR-Encoder file (or pair); the message says why and what to do."""


def _without_ddp_prefix(flat: dict) -> dict:
    """A checkpoint saved from a DDP-wrapped module prefixes every key with ``module.``."""
    if flat and all(k.startswith(DDP_PREFIX) for k in flat):
        return {k[len(DDP_PREFIX):]: v for k, v in flat.items()}
    return flat


def file_role(keys) -> str | None:
    """ALIGNER, LAYERS or None, from a file's tensor keys (either layout; a DDP ``module.`` prefix is ignored)."""
    keys = set(_without_ddp_prefix(dict.fromkeys(keys)))
    if "aligner.to_q.weight" in keys or {"to_q.weight", "to_k.weight", "to_v.0.weight"} <= keys:
        return ALIGNER
    if any(LAYER_KEY.match(k) for k in keys):
        return LAYERS
    return None


def aligner_state_dict(flat: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Either aligner layout -> :class:`SSRAligner` keys (the community layout)."""
    out = {}
    for key, tensor in _without_ddp_prefix(flat).items():
        for prefix in OFFICIAL_ALIGNER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        out[key] = tensor
    return out


def build_aligner(flat: dict[str, torch.Tensor], name: str = "aligner") -> SSRAligner:
    state = aligner_state_dict(flat)
    try:
        inner, query_dim = state["to_q.weight"].shape
        feature_dim = state["to_k.weight"].shape[1]
        with torch.device("meta"):
            aligner = SSRAligner(query_dim, feature_dim, inner, CLIP_DEPTHS, ALIGNER_HEADS)
        aligner.load_state_dict(state, strict=True, assign=True)
    except (KeyError, ValueError, RuntimeError) as e:
        raise SSRFormatError(f"{printable(name)} is not a complete SSR-Encoder aligner ({printable(str(e))[:300]}); "
                             "use pytorch_model.bin from the official release or ssr_aligner.safetensors") from e
    return aligner.eval().requires_grad_(False)


def build_layers(flat: dict[str, torch.Tensor], name: str = "layers") -> SSRLayers:
    pairs: dict[int, dict[str, torch.Tensor]] = {}
    for key, tensor in _without_ddp_prefix(flat).items():
        match = LAYER_KEY.match(key)
        if match:
            pairs.setdefault(int(match.group(1)), {})[match.group(2)] = tensor
    incomplete = [n for n, pair in sorted(pairs.items()) if set(pair) != {"to_k_SSR", "to_v_SSR"}]
    if not pairs or incomplete:
        raise SSRFormatError(f"{printable(name)} is not a complete SSR-Encoder layers file (layers {incomplete[:5]} lack "
                             "to_k_SSR or to_v_SSR); use pytorch_model_1.bin or ssr_attentions.safetensors")
    token_dims = {t.shape[1] for pair in pairs.values() for t in pair.values()}
    if len(token_dims) != 1:
        raise SSRFormatError(f"{printable(name)} is inconsistent: its layers read tokens of widths {sorted(token_dims)}")
    with torch.device("meta"):
        layers = SSRLayers(token_dims.pop(), {n: pair["to_k_SSR"].shape[0] for n, pair in pairs.items()})
    try:
        layers.load_state_dict({f"{n}.{p}.weight": t for n, pair in pairs.items() for p, t in pair.items()}, strict=True, assign=True)
    except RuntimeError as e:
        raise SSRFormatError(f"{printable(name)}: {printable(str(e))[:300]}") from e
    return layers.eval().requires_grad_(False)


@dataclass
class SSRCheckpoint:
    aligner: SSRAligner
    layers: SSRLayers
    aligner_file: Path
    layers_file: Path


def _is_checkpoint(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in PICKLE_SUFFIXES | {SAFETENSORS_SUFFIX}


def partner_candidates(path: Path) -> list[Path]:
    """Files of the same folder that may hold the other half: released names first, then the others (bounded)."""
    folder = path.parent
    known = [folder / n for n in KNOWN_PARTNERS.get(path.name.lower(), ()) if (folder / n).is_file()]
    others = sorted(p for p in folder.iterdir() if _is_checkpoint(p) and p != path and p not in known)
    return known + others[:MAX_PARTNER_CANDIDATES]


def find_partner(path: Path, wanted: str) -> Path:
    """The file next to ``path`` whose keys make it the ``wanted`` half, or a named error."""
    for candidate in partner_candidates(path):
        try:
            if file_role(read_keys(candidate, SSRFormatError)) == wanted:
                return candidate
        except CheckpointError as e:
            log.debug("skipping %s while looking for the SSR %s: %s", printable(candidate.name), wanted, printable(str(e)))
    have = ROLE_NAMES[LAYERS if wanted == ALIGNER else ALIGNER]
    raise SSRFormatError(
        f"{printable(path.name)} holds SSR-Encoder's {have.split(' (')[0]}, but its {ROLE_NAMES[wanted]} is not in the same "
        f"folder ({printable(path.parent)}). SSR-Encoder needs both files: put the missing one from the same release next to it."
    )


def load_ssr_checkpoint(path: str | Path) -> SSRCheckpoint:
    """Load the file the user picked and its partner from the same folder."""
    path = Path(path)
    flat, _ = read_tensors(path, SSRFormatError)
    role = file_role(flat.keys())
    if role is None:
        raise SSRFormatError(
            f"{printable(path.name)} is not an SSR-Encoder file: expected the aligner ('aligner.to_q.weight' or 'to_v.0.weight') "
            "or the attention layers ('1.to_k_SSR.weight')"
        )
    partner = find_partner(path, LAYERS if role == ALIGNER else ALIGNER)
    partner_flat, _ = read_tensors(partner, SSRFormatError)
    aligner_file, layers_file = (path, partner) if role == ALIGNER else (partner, path)
    aligner_flat, layers_flat = (flat, partner_flat) if role == ALIGNER else (partner_flat, flat)
    for file, tensors in ((aligner_file, aligner_flat), (layers_file, layers_flat)):
        require_floating(tensors, printable(file.name), SSRFormatError, "SSR-Encoder",
                         "use the official pytorch_model.bin + pytorch_model_1.bin or the ssr_*.safetensors pair.")
    aligner = build_aligner(aligner_flat, aligner_file.name)
    layers = build_layers(layers_flat, layers_file.name)
    if layers.token_dim != aligner.query_dim:
        raise SSRFormatError(
            f"{printable(aligner_file.name)} emits {aligner.query_dim}-wide tokens but {printable(layers_file.name)} reads "
            f"{layers.token_dim}-wide ones: the two files are not from the same release"
        )
    log.info("loaded SSR-Encoder %s + %s: %d layers", printable(aligner_file.name), printable(layers_file.name), len(layers))
    return SSRCheckpoint(aligner, layers, aligner_file, layers_file)
