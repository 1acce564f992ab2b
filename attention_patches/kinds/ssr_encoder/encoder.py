"""SSR-Encoder (SD1.5) as a subject-encoder kind.

Encode: the reference's CLIP-ViT-L/14 layer outputs are aligned to the query (a text, or a
mask, or both) into 6 x 77 subject tokens; the official unconditional tokens (empty query, zero
image, same mask) are kept beside them. Apply: every SD1.5 cross-attention gets, on the
generic routed attn2 patch, the subjects' SSR keys/values (one softmax over all subjects'
tokens, in subject order) and, for the negative rows, the unconditional ones. With a layout
each subject attends only inside its box; without one, everywhere (the official behaviour).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import torch

import comfy.model_management as mm
import comfy.model_patcher

from ....models.ssr_encoder.aligner import mask_query_bias
from ....models.ssr_encoder.layers import SSRLayers
from ....models.ssr_encoder.loader import SSRCheckpoint, file_role, load_ssr_checkpoint
from ....models.ssr_encoder.preprocess import CLIP_SIZE, clip_pixels, mask_grid
from ...injection import check_cross_attention, check_subjects_fit_layout, compute_dtype, route_subjects
from ...layer_map import AttnKey
from ..base import ApplySettings, Capabilities, Reference, Subject, SubjectEncoder, SubjectSetupError, encodings_of
from .encoding import NEEDS_CLIP, clip_layer_features, patch_grid, query_embedding
from .layer_map import SD15_DOWNSCALES, SD15_LAYERS

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
    where_to_get = ("pytorch_model.bin + pytorch_model_1.bin from the official SSR-Encoder Google Drive folder (linked from "
                    "github.com/Xiaojiu-z/SSR_Encoder), or ssr_aligner.safetensors + ssr_attentions.safetensors from "
                    "Hugging Face logtd/ssr_encoder; both files side by side")
    preview_downscales = SD15_DOWNSCALES
    capabilities = Capabilities(
        reference_inputs=frozenset({"clip_vision", "clip", "mask", "query", "mask_weight"}),
        required_inputs=frozenset({"clip_vision", "clip"}),
        phrase_tokenizer="SD1.5's CLIP tokenizer",
    )

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
        clip = reference.required_clip(NEEDS_CLIP, "SD1.5")
        features = clip_layer_features(reference.clip_vision, clip_pixels(reference.pixels), aligner.feature_dim)
        zero = clip_layer_features(reference.clip_vision, torch.zeros(1, 3, CLIP_SIZE, CLIP_SIZE), aligner.feature_dim)
        query = query_embedding(clip, reference.query_text, aligner.query_dim)
        empty = query_embedding(clip, "", aligner.query_dim)
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

    def apply(self, model, subjects: tuple[Subject, ...], layout, settings: ApplySettings, recorder=None):
        layers, keys = self.checkpoint.layers, self.layer_keys
        widths = {key: layers.layer(index).hidden_size for index, key in keys.items()}
        check_cross_attention(model, self, widths, layers.token_dim)
        check_subjects_fit_layout(subjects, layout, settings)
        encodings = encodings_of(self, subjects)
        self._loaded()
        dtype, device = compute_dtype(model), model.offload_device
        count = len(subjects)
        tokens = torch.stack([e.tokens for e in encodings])
        negative = torch.stack([e.negative for e in encodings])
        scales = token_scales(settings, count, self.official_multi_scale)
        boxes = layout.tensor() if layout is not None else torch.tensor([WHOLE_IMAGE] * count)
        return route_subjects(
            model,
            project_tokens(layers, keys, tokens, scales, settings.scale, dtype, device),
            boxes,
            settings,
            recorder,
            negative=project_tokens(layers, keys, negative, torch.ones(count), settings.scale, dtype, device),
        )
