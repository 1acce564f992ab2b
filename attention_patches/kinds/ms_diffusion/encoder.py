"""MS-Diffusion on SDXL: the grounded resampler + per-layer image keys/values, routed to each subject's box.

The resampler and the per-layer projections run once per Apply, on the device ComfyUI's
memory manager loads the encoder to; sampling only needs the projected keys/values.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import torch

import comfy.model_management as mm
import comfy.model_patcher

from ....models.ms_diffusion.loader import SubjectEncoderFormatError, load_encoder
from ....models.ms_diffusion.model import MSDiffusionEncoder
from ...injection import check_cross_attention, check_subjects_fit_layout, compute_dtype, route_subjects, subject_value_scales
from ...layer_map import AttnKey
from ...references import blank_background, image_encoder_family
from ....models.safe_text import quoted
from ..base import ApplySettings, Capabilities, Reference, Subject, SubjectEncoder, SubjectSetupError, encodings_of
from .layer_map import SDXL_ADAPTER_INDICES, SDXL_DOWNSCALES, sdxl_key_for_index

CHECKPOINT_PREFIXES = ("image_proj.", "ms_adapter.")


@dataclass(frozen=True, eq=False)
class EncodedSubject:
    """What MS-Diffusion needs of a subject: the raw CLIP-Vision features (the box is only known at Apply)."""

    image_features: torch.Tensor  # [V, T, C] CLIP-Vision penultimate hidden states, one row per view
    phrase_embedding: torch.Tensor  # [D] pooled CLIP-L output of the phrase, unprojected

    @property
    def feature_dim(self) -> int:
        return self.image_features.shape[-1]


def encode_phrase(clip, phrase: str) -> torch.Tensor:
    """[D] pooled CLIP-L output of ``phrase``, unprojected, as the official pipeline's text_encoder."""
    model = clip.cond_stage_model
    clip_l = getattr(model, "clip_l", None)
    if clip_l is None:
        raise ValueError(
            "this CLIP has no CLIP-L text encoder; connect the SDXL checkpoint's CLIP "
            "(MS-Diffusion encodes each subject's phrase with SDXL's CLIP-L)"
        )
    tokens = clip.tokenize(phrase)
    tokens = tokens.get("l", tokens) if isinstance(tokens, dict) else tokens
    model.reset_clip_options()
    model.set_clip_options({"projected_pooled": False})
    try:
        clip.load_model()
        _, pooled = clip_l.encode_token_weights(tokens)[:2]
    finally:
        model.reset_clip_options()
    return pooled[0].float()


class MSDiffusionSDXL(SubjectEncoder):
    kind = "ms_diffusion_sdxl"
    title = "MS-Diffusion (SDXL)"
    base_model = "SDXL"
    model_folders = ("msdiffusion",)
    where_to_get = "ms_adapter.bin from the MS-Diffusion release (Hugging Face doge1516/MS-Diffusion)"
    preview_downscales = SDXL_DOWNSCALES
    capabilities = Capabilities(
        layout="required",
        reference_inputs=frozenset({"clip_vision", "clip", "mask"}),
        required_inputs=frozenset({"clip_vision", "clip"}),
        phrase_tokenizer="SDXL's CLIP-L tokenizer",
    )

    def __init__(self, name: str, module: MSDiffusionEncoder, patcher: comfy.model_patcher.ModelPatcher):
        self.name = name
        self.module = module
        self.patcher = patcher

    @classmethod
    def recognises(cls, keys: Collection[str]) -> bool:
        return any(key.startswith(CHECKPOINT_PREFIXES) for key in keys)

    @classmethod
    def load(cls, path: Path) -> MSDiffusionSDXL:
        module = load_encoder(path)
        unknown = sorted(set(module.layer_indices) - set(SDXL_ADAPTER_INDICES))
        if unknown:
            raise SubjectEncoderFormatError(
                f"{quoted(Path(path).name)} has adapter layers {unknown[:5]} that SDXL does not have; only SDXL MS-Diffusion encoders are supported"
            )
        params = sum(p.numel() for p in module.parameters())
        dtype = mm.unet_dtype(model_params=params, supported_dtypes=[torch.float16, torch.bfloat16, torch.float32])
        module.to(dtype)
        patcher = comfy.model_patcher.ModelPatcher(module, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())
        return cls(Path(path).name, module, patcher)

    @property
    def layer_keys(self) -> dict[int, AttnKey]:
        return {index: sdxl_key_for_index(index) for index in self.module.layer_indices}

    @property
    def attention_widths(self) -> dict[AttnKey, int]:
        """Hidden width of the cross-attention each patched key must have."""
        return {key: self.module.layer(index).hidden_size for index, key in self.layer_keys.items()}

    @property
    def cross_attention_dim(self) -> int:
        return self.module.cross_attention_dim

    @property
    def feature_dim(self) -> int:
        """Width of the image features a subject must be encoded with."""
        return self.module.config.embedding_dim

    @property
    def phrase_dim(self) -> int:
        return self.module.config.phrase_dim

    def encode(self, reference: Reference) -> EncodedSubject:
        if reference.clip_vision is None:
            raise SubjectSetupError("MS-Diffusion encodes references with CLIP-ViT-bigG: connect Load CLIP Vision "
                                    "(clip_vision_g.safetensors) to Encode Reference's clip_vision")
        clip = reference.required_clip("MS-Diffusion encodes each phrase with SDXL's CLIP-L", "SDXL")
        pixels = reference.pixels if reference.mask is None else blank_background(reference.pixels, reference.mask)
        features = reference.clip_vision.encode_image(pixels, crop=False)["penultimate_hidden_states"]
        if features.shape[-1] != self.feature_dim:
            raise SubjectSetupError(
                f"the reference was encoded with {image_encoder_family(features.shape[-1])}; this encoder needs "
                f"{image_encoder_family(self.feature_dim)}. Load clip_vision_g.safetensors (CLIP-ViT-bigG) with Load CLIP "
                "Vision and feed it to Encode Reference."
            )
        phrase = encode_phrase(clip, reference.phrase)
        if phrase.shape[-1] != self.phrase_dim:
            raise SubjectSetupError(
                f"the phrase embedding is {phrase.shape[-1]}-wide, the encoder expects {self.phrase_dim} (SDXL's CLIP-L): "
                "connect the SDXL checkpoint's CLIP to Encode Reference"
            )
        return EncodedSubject(features.float().cpu(), phrase.cpu())

    def apply(self, model, subjects: tuple[Subject, ...], layout, settings: ApplySettings, recorder=None):
        if layout is None:
            raise SubjectSetupError("MS-Diffusion places every subject in a box: connect a Draw Layout Box to 'layout'")
        check_cross_attention(model, self, self.attention_widths, self.cross_attention_dim)
        check_subjects_fit_layout(subjects, layout, settings)
        encoded = encodings_of(self, subjects)
        boxes = layout.tensor()
        tokens = self.encode_subjects([e.image_features for e in encoded], torch.stack([e.phrase_embedding for e in encoded]),
                                      boxes, settings.drop_grounding)
        projections = self.project(tokens, subject_value_scales(settings, len(subjects)), compute_dtype(model), model.offload_device)
        return route_subjects(model, projections, boxes, settings, recorder)

    def _loaded(self) -> tuple[torch.device, torch.dtype]:
        mm.load_models_gpu([self.patcher])
        parameter = next(self.module.parameters())
        return parameter.device, parameter.dtype

    @torch.no_grad()
    def encode_subjects(self, features: list[torch.Tensor], phrase_embeds: torch.Tensor, boxes: torch.Tensor,
                        drop_grounding: bool = False) -> torch.Tensor:
        """[S, Q, C] tokens; a subject's views are resampled one by one and averaged."""
        device, dtype = self._loaded()
        tokens = []
        for views, phrase, box in zip(features, phrase_embeds, boxes):
            count = views.shape[0]
            out = self.module.encode_subjects(
                views.to(device, dtype),
                phrase.to(device, dtype).expand(count, -1),
                box.to(device, dtype).expand(count, -1),
                drop_grounding,
            )
            tokens.append(out.float().mean(dim=0))
        return torch.stack(tokens).to(mm.intermediate_device())

    @torch.no_grad()
    def project(self, tokens: torch.Tensor, value_scales: torch.Tensor, dtype: torch.dtype,
                device: torch.device) -> dict[AttnKey, tuple[torch.Tensor, torch.Tensor]]:
        """Every layer's [S, Q, hidden] keys and scaled values, stored on ``device`` in ``dtype``."""
        run_device, run_dtype = self._loaded()
        tokens = tokens.to(run_device, run_dtype)
        scales = value_scales.to(run_device, torch.float32).view(-1, 1, 1)
        out = {}
        for index, key in self.layer_keys.items():
            k, v = self.module.project_tokens(index, tokens)
            out[key] = (k.to(device, dtype), (v.float() * scales).to(device, dtype))
        return out
