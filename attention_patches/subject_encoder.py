"""What Load Subject Encoder outputs: the encoder weights under a ComfyUI ModelPatcher.

The resampler and the per-layer projections run once per Apply, on the device ComfyUI's
memory manager loads the encoder to; sampling only needs the projected keys/values.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

import comfy.model_management as mm
import comfy.model_patcher

from ..models.loader import SubjectEncoderFormatError, load_encoder
from ..models.ms_diffusion import MSDiffusionEncoder
from .safe_text import quoted
from .layer_map import SDXL_ADAPTER_INDICES, SDXL_BLOCKS, AttnKey, sdxl_key_for_index

KIND_MS_DIFFUSION_SDXL = "ms_diffusion_sdxl"


@dataclass(eq=False)
class SubjectEncoder:
    name: str
    module: MSDiffusionEncoder
    patcher: comfy.model_patcher.ModelPatcher
    kind: str = KIND_MS_DIFFUSION_SDXL

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

    @property
    def downscales(self) -> dict[AttnKey, int]:
        return {(span.block, span.number, t): span.downscale for span in SDXL_BLOCKS for t in range(span.transformers)}

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


def load_subject_encoder(path: str | Path) -> SubjectEncoder:
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
    return SubjectEncoder(Path(path).name, module, patcher)
