"""FastComposer (SD1.5) as a subject-encoder kind: one fused token per person."""

from __future__ import annotations

import logging
from collections.abc import Collection
from pathlib import Path

import torch

import comfy.clip_model
import comfy.model_management as mm
import comfy.model_patcher
import comfy.ops
import comfy.patcher_extension

from ....models.fastcomposer.delay import DEMO_START_PERCENT
from ....models.fastcomposer.loader import FastComposerFormatError, FastComposerWeights, is_fastcomposer, load_weights
from ....models.fastcomposer.preprocess import OBJECT_RESOLUTION, reference_vision_input, replace_background
from ..base import ApplySettings, Capabilities, Reference, Subject, SubjectEncoder, SubjectSetupError, encodings_of, missing_clip_message
from .fusion_patch import WRAPPER_KEY, BoxedFusionAttention, FusedPeople, FusionWrapper
from .model_check import check_model, cross_attention_blocks
from .tokens import PhraseNotFoundError, subject_token_positions

log = logging.getLogger("comfyui_multisubject.fastcomposer")
NEEDS_CLIP = "FastComposer finds each person's word in the prompt with the SD1.5 checkpoint's CLIP tokenizer"


class FastComposerEncoder(SubjectEncoder):
    """The fine-tuned CLIP ViT-L/14 image encoder and the fusion MLP of FastComposer's checkpoint."""

    kind = "fastcomposer_sd15"
    title = "FastComposer (SD1.5)"
    base_model = "SD1.5"
    model_folders = ("fastcomposer",)
    where_to_get = ("pytorch_model.bin from Hugging Face mit-han-lab/fastcomposer, split once with scripts/convert_fastcomposer.py "
                    "into fastcomposer_encoder.safetensors (models/fastcomposer) and fastcomposer_unet.safetensors "
                    "(models/diffusion_models, Load Diffusion Model)")
    preview_downscales = (1, 2, 4)  # SD1.5's cross-attention grids: latent / 1, 2 and 4
    capabilities = Capabilities(
        reference_inputs=frozenset({"clip", "mask"}),
        required_inputs=frozenset({"clip"}),
        phrase_tokenizer="SD1.5's CLIP tokenizer",
    )

    def __init__(self, name: str, weights: FastComposerWeights, object_resolution: int = OBJECT_RESOLUTION):
        self.name = name
        self.vision = weights.vision
        self.postfuse = weights.postfuse
        self.unet_fingerprint = weights.unet_fingerprint
        self.object_resolution = object_resolution
        load_device, offload_device = mm.text_encoder_device(), mm.text_encoder_offload_device()
        # ComfyUI's CLIP-vision dtype, but fp32 on a CPU (where half precision is slow and loses the goldens)
        dtype = torch.float32 if mm.is_device_cpu(load_device) else mm.text_encoder_dtype(load_device)
        self.image_encoder = comfy.clip_model.CLIPVisionModelProjection(weights.vision, dtype, offload_device, comfy.ops.manual_cast)
        try:
            self.image_encoder.load_state_dict(weights.image_encoder, strict=True)
        except RuntimeError as e:
            raise FastComposerFormatError(f"{name}: the image encoder 'image_encoder.*' is not a CLIP ViT ({e})") from e
        self.image_encoder.eval().requires_grad_(False)
        self.patcher = comfy.model_patcher.ModelPatcher(self.image_encoder, load_device=load_device, offload_device=offload_device)

    @property
    def embed_dim(self) -> int:
        return self.postfuse.embed_dim

    @classmethod
    def recognises(cls, keys: Collection[str]) -> bool:
        return is_fastcomposer(keys)

    @classmethod
    def load(cls, path: Path) -> FastComposerEncoder:
        encoder = cls(Path(path).name, load_weights(path))
        log.info("loaded FastComposer encoder %s: vision %s", Path(path).name, encoder.vision)
        return encoder

    @torch.no_grad()
    def object_embeddings(self, views: torch.Tensor) -> torch.Tensor:
        """[V, D] embeddings (projection of the post-LN class token, unnormalised) of IMAGE views [V, H, W, 3]."""
        mm.load_model_gpu(self.patcher)
        pixels = reference_vision_input(views, self.vision["image_size"], self.object_resolution)
        embeds = self.image_encoder(pixel_values=pixels.to(self.patcher.load_device))[2]
        return embeds.float().to(mm.intermediate_device())

    def encode(self, reference: Reference) -> torch.Tensor:
        """One [D] embedding per person: the official embedding of each photo, averaged over the photos."""
        reference.required_clip(NEEDS_CLIP, "SD1.5")  # read at Apply: caught here, on the node that has the input
        views = reference.pixels
        if reference.mask is not None:  # the encoder was trained on faces cut out of their background: black it out
            views = replace_background(views, reference.mask.unsqueeze(-1) >= 0.5)
        return self.object_embeddings(views).mean(dim=0).cpu()

    def apply(self, model, subjects: tuple[Subject, ...], layout, settings: ApplySettings, recorder=None):
        check_model(model, self)
        if not subjects:
            raise SubjectSetupError("no people: connect at least one Encode Reference (one per person)")
        if layout is not None and len(layout.boxes) != len(subjects):
            raise SubjectSetupError(
                f"{len(subjects)} people but {len(layout.boxes)} box(es): draw exactly one box per person, in the order "
                "the Encode Reference nodes are chained, or disconnect the layout"
            )
        people = FusedPeople(
            postfuse=self.postfuse,
            embeddings=torch.stack(encodings_of(self, subjects)).float(),
            positions=self.token_positions(subjects, settings.prompt),
            sigma_range=self._sigma_range(model, settings),
            boxes=layout.tensor() if layout is not None else None,
            feather=settings.feather,
        )
        patched = model.clone()
        fusion = FusionWrapper(people)
        patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY, fusion)
        patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY, fusion.outer_sample)
        if people.boxes is not None:
            existing = patched.model_options["transformer_options"].get("patches_replace", {}).get("attn2", {})
            for key, attn2 in cross_attention_blocks(patched).items():
                current = existing.get(key, existing.get(key[:2]))
                if isinstance(current, BoxedFusionAttention):
                    patch = current.with_people(people)
                else:
                    patch = BoxedFusionAttention(key, attn2, (people,), base=current)
                patched.set_model_attn2_replace(patch, *key)
        return patched

    @staticmethod
    def token_positions(subjects: tuple[Subject, ...], prompt: str) -> tuple[int, ...]:
        """The context token each person's fused embedding replaces (the last token of the person's phrase)."""
        if not prompt.strip():
            raise SubjectSetupError(
                "FastComposer needs the positive prompt in Apply's 'prompt' input (the same text as the positive CLIP Text "
                "Encode: type it there too, or drag one text node's link onto both 'prompt' and its 'text') to find each "
                "person's word"
            )
        tokenizer = subjects[0].tokenizer
        if tokenizer is None:
            raise SubjectSetupError(missing_clip_message(NEEDS_CLIP, "SD1.5"))
        try:
            return subject_token_positions(tokenizer, prompt, [s.phrase for s in subjects])
        except PhraseNotFoundError as e:
            raise SubjectSetupError(str(e)) from e

    @staticmethod
    def _sigma_range(model, settings: ApplySettings) -> tuple[float, float]:
        """Fused from the switch on: start_percent, or the official demo's (alpha 0.75 at 50 steps) when it is 0."""
        start = settings.start_percent if settings.start_percent > 0.0 else DEMO_START_PERCENT
        if start >= settings.end_percent:
            raise SubjectSetupError(f"start_percent ({start:.3f}) must be below end_percent ({settings.end_percent:.3f})")
        sampling = model.get_model_object("model_sampling")
        return float(sampling.percent_to_sigma(start)), float(sampling.percent_to_sigma(settings.end_percent))
