"""Apply subjects to a MODEL: validate, resample once, project once, register the patches on a clone."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

import comfy.model_patcher
import comfy.patcher_extension

from .auto_routing import AutoRouting
from .layer_map import AttnKey
from .layout import Layout
from .patch import WRAPPER_KEY, MultiSubjectAttention, SubjectRouting, sampler_sample_wrapper
from .recorder import RouteRecorder
from .references import Subject, image_encoder_family
from .safe_text import quoted
from .subject_bank import SubjectBank
from .subject_encoder import SubjectEncoder

log = logging.getLogger("comfyui_multisubject")


class SubjectSetupError(ValueError):
    """Inputs that cannot work together; the message names the problem and the fix."""


@dataclass(frozen=True)
class ApplySettings:
    scale: float = 0.6
    subject_scales: tuple[float, ...] | None = None
    start_percent: float = 0.0
    end_percent: float = 1.0
    drop_grounding: bool = False
    feather: float = 0.0
    auto: AutoRouting | None = None


def model_context_dim(model) -> int | None:
    config = getattr(model.model, "model_config", None)
    return (getattr(config, "unet_config", None) or {}).get("context_dim")


def cross_attention_module(diffusion_model, key: AttnKey):
    """The attn2 module ComfyUI's key addresses, or None."""
    block, number, index = key
    try:
        container = {"input": diffusion_model.input_blocks, "output": diffusion_model.output_blocks}.get(block)
        stage = diffusion_model.middle_block if block == "middle" else container[number]
        transformer = next(m for m in stage if hasattr(m, "transformer_blocks"))
        return transformer.transformer_blocks[index].attn2
    except (AttributeError, IndexError, KeyError, StopIteration, TypeError):
        return None


def validate(model, encoder: SubjectEncoder, subjects: tuple[Subject, ...], layout: Layout, settings: ApplySettings) -> None:
    context_dim = model_context_dim(model)
    if context_dim is not None and context_dim != encoder.cross_attention_dim:
        raise SubjectSetupError(
            f"the subject encoder {quoted(encoder.name)} is for SDXL (cross-attention width {encoder.cross_attention_dim}) "
            f"but the MODEL's cross-attention width is {context_dim}: load an SDXL checkpoint (or an SDXL fine-tune)"
        )
    diffusion_model = model.get_model_object("diffusion_model")
    for key, width in encoder.attention_widths.items():
        attn = cross_attention_module(diffusion_model, key)
        if attn is None or getattr(attn.to_q, "out_features", width) != width:
            found = "no cross-attention there" if attn is None else f"width {attn.to_q.out_features}"
            raise SubjectSetupError(
                f"the subject encoder {quoted(encoder.name)} does not fit this MODEL: it expects a {width}-wide cross-attention "
                f"at {key[0]} {key[1]}.{key[2]}, the MODEL has {found}. Use an SDXL checkpoint."
            )
    if not subjects:
        raise SubjectSetupError("no subjects: connect at least one Encode Reference")
    if len(subjects) != len(layout.boxes):
        phrases = ", ".join(quoted(s.phrase, 40) for s in subjects[:8]) + (", ..." if len(subjects) > 8 else "")
        raise SubjectSetupError(
            f"{len(subjects)} subject(s) ({phrases}) but {len(layout.boxes)} box(es): draw exactly one box per subject, "
            "in the order the Encode Reference nodes are chained"
        )
    for number, subject in enumerate(subjects, start=1):
        if subject.feature_dim != encoder.feature_dim:
            raise SubjectSetupError(
                f"subject {number} ({quoted(subject.phrase)}) was encoded with {image_encoder_family(subject.feature_dim)}; "
                f"this encoder needs {image_encoder_family(encoder.feature_dim)}. Load clip_vision_g.safetensors "
                "(CLIP-ViT-bigG) with Load CLIP Vision and feed it to Encode Reference."
            )
        if subject.phrase_embedding.shape[-1] != encoder.phrase_dim:
            raise SubjectSetupError(
                f"subject {number} ({quoted(subject.phrase)}): its phrase embedding is {subject.phrase_embedding.shape[-1]}-wide, "
                f"the encoder expects {encoder.phrase_dim} (SDXL's CLIP-L): connect the SDXL checkpoint's CLIP to Encode Reference"
            )
    for number, (subject, box) in enumerate(zip(subjects, layout.boxes), start=1):
        if box.label and box.label.lower() != subject.phrase.lower():
            log.warning("box %d is labelled %s but subject %d is %s; boxes follow subject order", number, quoted(box.label), number,
                        quoted(subject.phrase))
    if settings.subject_scales is not None and len(settings.subject_scales) != len(subjects):
        raise SubjectSetupError(
            f"{len(settings.subject_scales)} per-subject scale(s) for {len(subjects)} subject(s): give one scale per subject, "
            "or leave subject_scales empty to use scale for all"
        )


def sigma_range(model, start_percent: float, end_percent: float) -> tuple[float, float] | None:
    if start_percent <= 0.0 and end_percent >= 1.0:
        return None
    if start_percent >= end_percent:
        raise SubjectSetupError(f"start_percent ({start_percent}) must be below end_percent ({end_percent})")
    sampling = model.get_model_object("model_sampling")
    return float(sampling.percent_to_sigma(start_percent)), float(sampling.percent_to_sigma(end_percent))


def compute_dtype(model) -> torch.dtype:
    return getattr(model.model, "manual_cast_dtype", None) or model.model_dtype()


def apply_subjects(
    model: comfy.model_patcher.ModelPatcher,
    encoder: SubjectEncoder,
    subjects: tuple[Subject, ...],
    layout: Layout,
    settings: ApplySettings,
    recorder: RouteRecorder | None = None,
) -> comfy.model_patcher.ModelPatcher:
    """A clone of ``model`` whose cross-attention blocks route the subjects; ``model`` is untouched."""
    validate(model, encoder, subjects, layout, settings)
    boxes = layout.tensor()
    tokens = encoder.encode_subjects(
        [s.image_features for s in subjects],
        torch.stack([s.phrase_embedding for s in subjects]),
        boxes,
        settings.drop_grounding,
    )
    value_scales = torch.tensor(settings.subject_scales or [settings.scale] * len(subjects), dtype=torch.float32)
    bank = SubjectBank(encoder.project(tokens, value_scales, compute_dtype(model), model.offload_device))
    routing = SubjectRouting(
        bank=bank,
        bank_patcher=comfy.model_patcher.ModelPatcher(bank, load_device=model.load_device, offload_device=model.offload_device),
        boxes=boxes,
        downscales=encoder.downscales,
        sigma_range=sigma_range(model, settings.start_percent, settings.end_percent),
        feather=settings.feather,
        auto=settings.auto,
        recorder=recorder,
    )
    patched = model.clone()
    existing = patched.model_options["transformer_options"].get("patches_replace", {}).get("attn2", {})
    for key in encoder.attention_widths:
        current = existing.get(key, existing.get(key[:2]))
        if isinstance(current, MultiSubjectAttention):
            patch = current.with_routing(routing)
        else:
            patch = MultiSubjectAttention(key, (routing,), base=current)
        patched.set_model_attn2_replace(patch, *key)
    sampler_wrappers = comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE
    if not patched.get_wrappers(sampler_wrappers, WRAPPER_KEY):
        patched.add_wrapper_with_key(sampler_wrappers, WRAPPER_KEY, sampler_sample_wrapper)
    return patched
