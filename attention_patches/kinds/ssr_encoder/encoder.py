"""SSR-Encoder (SD1.5) as a subject-encoder kind.

Encode: the reference's CLIP-ViT-L/14 layer outputs are aligned to the query (a text, or a
mask, or both) into 6 x 77 subject tokens; the official unconditional tokens (empty query, zero
image, same mask) are kept beside them. Apply: every SD1.5 cross-attention gets, on the
generic routed attn2 patch, the subjects' SSR keys/values (one softmax over all subjects'
tokens, in subject order) and, for the negative rows, the unconditional ones. With a layout
each subject attends only inside its box; without one, everywhere (the official behaviour).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Hashable
from dataclasses import dataclass
from pathlib import Path

import torch

import comfy.model_management as mm
import comfy.model_patcher

from ....models.ssr_encoder.aligner import mask_query_bias
from ....models.ssr_encoder.layers import SSRLayers
from ....models.ssr_encoder.loader import SSRCheckpoint, file_role, load_ssr_checkpoint, shown
from ....models.ssr_encoder.preprocess import CLIP_SIZE, clip_pixels, mask_grid
from ...injection import cross_attention_module, model_context_dim, register_routing, sigma_range
from ...layer_map import AttnKey
from ...patch import SubjectRouting
from ...subject_bank import SubjectBank
from ..base import ApplySettings, Reference, Subject, SubjectEncoder, SubjectSetupError
from .encoding import clip_layer_features, patch_grid, query_embedding
from .layer_map import SD15_DOWNSCALES, SD15_LAYERS

log = logging.getLogger("comfyui_multisubject.kinds.ssr_encoder")

DEFAULT_MASK_WEIGHT = 5.0  # the official generate_mask default (infer_mask.py uses 1 and says to tune it)
WHOLE_IMAGE = (0.0, 0.0, 1.0, 1.0)


@dataclass(frozen=True)
class SSREncoding:
    """One subject's tokens [6*77, D] (views averaged) and its unconditional tokens (empty query, zero image, same mask)."""

    tokens: torch.Tensor
    negative: torch.Tensor


def token_scales(settings: ApplySettings, count: int, official_multi_scale: bool) -> torch.Tensor:
    """[S] factor on each subject's tokens (keys and values): its own subject scale, or every subject x the first
    (the official ``generate_multi``, for parity); 1 when no subject scales are given."""
    scales = list(settings.subject_scales or [1.0] * count)
    if official_multi_scale:
        scales = [scales[0]] * count
    return torch.tensor(scales, dtype=torch.float32)


@torch.no_grad()
def project_tokens(layers: SSRLayers, keys: dict[int, AttnKey], tokens: torch.Tensor, token_scale: torch.Tensor,
                   output_scale: float, dtype: torch.dtype, device: torch.device) -> dict[AttnKey, tuple[torch.Tensor, torch.Tensor]]:
    """Every layer's [S, T, hidden] SSR keys and values of ``tokens`` [S, T, D].

    ``token_scale`` [S] multiplies the tokens (hence keys and values: it sharpens the subject's
    softmax too), ``output_scale`` (the official processor scale) only the values.
    """
    weight = next(layers.parameters())
    scaled = tokens.to(weight.device, torch.float32) * token_scale.to(weight.device).view(-1, 1, 1)
    out = {}
    for index, key in keys.items():
        k, v = layers.layer(index)(scaled.to(weight.dtype))
        out[key] = (k.to(device, dtype), (v.float() * output_scale).to(device, dtype))
    return out


class SSREncoder(SubjectEncoder):
    kind = "ssr_encoder_sd15"
    title = "SSR-Encoder (SD1.5)"
    base_model = "SD1.5"
    model_folders = ("ssr_encoder", "ssr")
    preview_downscales = SD15_DOWNSCALES

    def __init__(self, name: str, checkpoint: SSRCheckpoint, patcher, mask_crop: bool = True, mask_antialias: bool = True,
                 official_multi_scale: bool = False):
        self.name = name
        self.checkpoint = checkpoint
        self.patcher = patcher
        self.mask_crop = mask_crop  # crop the mask query like the image (False: squash it, as the official code)
        self.mask_antialias = mask_antialias  # torchvision >= 0.17's resize (False: <= 0.16)
        self.official_multi_scale = official_multi_scale  # every subject's tokens x the first subject scale

    @classmethod
    def recognises(cls, keys: Collection[str]) -> bool:
        return file_role(keys) is not None

    @classmethod
    def load(cls, path: Path) -> SSREncoder:
        checkpoint = load_ssr_checkpoint(path)
        modules = torch.nn.ModuleDict({"aligner": checkpoint.aligner, "layers": checkpoint.layers})
        params = sum(p.numel() for p in modules.parameters())
        modules.to(mm.unet_dtype(model_params=params, supported_dtypes=[torch.float16, torch.bfloat16, torch.float32]))
        patcher = comfy.model_patcher.ModelPatcher(modules, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())
        return cls(Path(path).name, checkpoint, patcher)

    @property
    def layer_keys(self) -> dict[int, AttnKey]:
        return {index: SD15_LAYERS[index].key for index in self.checkpoint.layers.indices}

    def encoding_key(self) -> Hashable:
        return (self.kind, id(self.checkpoint), self.mask_crop, self.mask_antialias)

    def _loaded(self) -> tuple[torch.device, torch.dtype]:
        mm.load_models_gpu([self.patcher])
        weight = next(self.checkpoint.aligner.parameters())
        return weight.device, weight.dtype

    @torch.no_grad()
    def encode(self, reference: Reference) -> SSREncoding:
        aligner = self.checkpoint.aligner
        if reference.clip_vision is None:
            raise SubjectSetupError("SSR-Encoder encodes the reference with CLIP-ViT-L/14: connect Load CLIP Vision "
                                    "(clip_vision_vit_l / openai clip-vit-large-patch14) to Encode Reference")
        features = clip_layer_features(reference.clip_vision, clip_pixels(reference.pixels), aligner.feature_dim)
        zero = clip_layer_features(reference.clip_vision, torch.zeros(1, 3, CLIP_SIZE, CLIP_SIZE), aligner.feature_dim)
        query = query_embedding(reference.clip, reference.query_text, aligner.query_dim)
        empty = query_embedding(reference.clip, "", aligner.query_dim)
        bias = None
        if reference.mask is not None:
            weight = reference.mask_weight
            grid = mask_grid(reference.mask, patch_grid(reference.clip_vision), self.mask_crop, self.mask_antialias)
            bias = mask_query_bias(grid, DEFAULT_MASK_WEIGHT if weight is None else float(weight))
        device, dtype = self._loaded()
        views = features.shape[0]

        def align(q: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
            rows = max(q.shape[0], f.shape[0], 1 if bias is None else bias.shape[0])
            b = None if bias is None else bias.to(device, torch.float32)
            out = aligner(q.to(device, dtype).expand(rows, -1, -1), f.to(device, dtype).expand(rows, -1, -1), b)
            return out.float().mean(dim=0).to(mm.intermediate_device())

        return SSREncoding(align(query, features), align(empty, zero.expand(1 if bias is None else views, -1, -1)))

    def check_model(self, model) -> None:
        """Named errors for a MODEL this encoder does not fit (an SDXL one, a UNet of other widths)."""
        token_dim = self.checkpoint.layers.token_dim
        context_dim = model_context_dim(model)
        if context_dim is not None and context_dim != token_dim:
            raise SubjectSetupError(
                f"the subject encoder '{shown(self.name)}' is {self.title}: it needs an SD1.5 MODEL (cross-attention width "
                f"{token_dim}) but this MODEL's cross-attention width is {context_dim}"
                f"{' (SDXL)' if context_dim == 2048 else ''}. Load an SD1.5 checkpoint (or an SD1.5 fine-tune)."
            )
        diffusion_model = model.get_model_object("diffusion_model")
        for index, key in self.layer_keys.items():
            width = self.checkpoint.layers.layer(index).hidden_size
            attn = cross_attention_module(diffusion_model, key)
            if attn is None or getattr(attn.to_q, "out_features", width) != width:
                found = "no cross-attention there" if attn is None else f"width {attn.to_q.out_features}"
                raise SubjectSetupError(
                    f"the subject encoder '{shown(self.name)}' does not fit this MODEL: its layer {index} expects a "
                    f"{width}-wide cross-attention at {key[0]} {key[1]}.{key[2]}, the MODEL has {found}. Use an SD1.5 checkpoint."
                )

    def apply(self, model, subjects: tuple[Subject, ...], layout, settings: ApplySettings, recorder=None):
        self.check_model(model)
        if not subjects:
            raise SubjectSetupError("no subjects: connect at least one Encode Reference")
        if layout is not None and len(layout.boxes) != len(subjects):
            raise SubjectSetupError(
                f"{len(subjects)} subject(s) but {len(layout.boxes)} box(es): draw exactly one box per subject, in the "
                "order the Encode Reference nodes are chained (or disconnect the layout: every subject then acts everywhere)"
            )
        if settings.subject_scales is not None and len(settings.subject_scales) != len(subjects):
            raise SubjectSetupError(
                f"{len(settings.subject_scales)} per-subject scale(s) for {len(subjects)} subject(s): give one scale per "
                "subject, or leave subject_scales empty"
            )
        encodings = [subject.encoded(self) for subject in subjects]
        self._loaded()
        layers, keys = self.checkpoint.layers, self.layer_keys
        dtype = getattr(model.model, "manual_cast_dtype", None) or model.model_dtype()
        device = model.offload_device
        tokens = torch.stack([e.tokens for e in encodings])
        negative = torch.stack([e.negative for e in encodings])
        scales = token_scales(settings, len(subjects), self.official_multi_scale)
        bank = SubjectBank(
            project_tokens(layers, keys, tokens, scales, settings.scale, dtype, device),
            project_tokens(layers, keys, negative, torch.ones(len(subjects)), settings.scale, dtype, device),
        )
        boxes = layout.tensor() if layout is not None else torch.tensor([WHOLE_IMAGE] * len(subjects))
        routing = SubjectRouting(
            bank=bank,
            bank_patcher=comfy.model_patcher.ModelPatcher(bank, load_device=model.load_device, offload_device=model.offload_device),
            boxes=boxes,
            downscales={layer.key: layer.downscale for layer in SD15_LAYERS.values()},
            sigma_range=sigma_range(model, settings.start_percent, settings.end_percent),
            feather=settings.feather,
            auto=settings.auto,
            recorder=recorder,
        )
        return register_routing(model, routing, tuple(keys.values()))
