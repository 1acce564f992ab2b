"""Generic Apply glue for kinds that patch cross-attention (attn2): checks, the sigma window, registration.

A kind projects its subjects' keys/values into a :class:`SubjectBank` and calls
:func:`route_subjects`; the patches, their chaining with other packs' patches and the per-run
wrapper are the same for every kind.
"""

from __future__ import annotations

import torch

import comfy.model_patcher
import comfy.patcher_extension

from .kinds.base import ApplySettings, Subject, SubjectSetupError
from .layer_map import AttnKey
from .auto_routing import AutoRouting
from .layout import Layout
from .patch import WRAPPER_KEY, MultiSubjectAttention, SubjectRouting, sampler_sample_wrapper
from .recorder import RouteRecorder
from ..models.safe_text import quoted
from .subject_bank import SubjectBank


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


def a_checkpoint_of(base_model: str) -> str:
    """'an SDXL checkpoint', 'a FLUX checkpoint': base-model names are read letter by letter when they start with SD."""
    article = "an" if base_model[:1] in "AEIOU" or base_model.startswith("SD") else "a"
    return f"{article} {base_model} checkpoint"


def check_cross_attention(model, encoder, widths: dict[AttnKey, int], context_dim: int) -> None:
    """The MODEL has a cross-attention of the right width at every key and reads ``context_dim``-wide text."""
    found_context = model_context_dim(model)
    if found_context is not None and found_context != context_dim:
        raise SubjectSetupError(
            f"the subject encoder {quoted(encoder.name)} is {encoder.title} (cross-attention width {context_dim}) "
            f"but the MODEL's cross-attention width is {found_context}: load {a_checkpoint_of(encoder.base_model)} "
            f"(or a {encoder.base_model} fine-tune)"
        )
    diffusion_model = model.get_model_object("diffusion_model")
    for key, width in widths.items():
        attn = cross_attention_module(diffusion_model, key)
        if attn is None or getattr(attn.to_q, "out_features", width) != width:
            found = "no cross-attention there" if attn is None else f"width {attn.to_q.out_features}"
            raise SubjectSetupError(
                f"the subject encoder {quoted(encoder.name)} does not fit this MODEL: it expects a {width}-wide cross-attention "
                f"at {key[0]} {key[1]}.{key[2]}, the MODEL has {found}. Use {a_checkpoint_of(encoder.base_model)}."
            )


def check_subjects_fit_layout(subjects: tuple[Subject, ...], layout: Layout | None, settings: ApplySettings) -> None:
    """At least one subject, one box per subject (when there is a layout), one scale per subject (when given)."""
    if not subjects:
        raise SubjectSetupError("no subjects: connect at least one Encode Reference")
    if layout is not None and len(subjects) != len(layout.boxes):
        phrases = ", ".join(quoted(s.phrase, 40) for s in subjects[:8]) + (", ..." if len(subjects) > 8 else "")
        raise SubjectSetupError(
            f"{len(subjects)} subject(s) ({phrases}) but {len(layout.boxes)} box(es): draw exactly one box per subject, "
            "in the order the Encode Reference nodes are chained"
        )
    if settings.subject_scales is not None and len(settings.subject_scales) != len(subjects):
        raise SubjectSetupError(
            f"{len(settings.subject_scales)} per-subject scale(s) for {len(subjects)} subject(s): give one scale per subject, "
            "or leave subject_scales empty to use scale for all"
        )


def subject_value_scales(settings: ApplySettings, count: int) -> torch.Tensor:
    """[S] strength of each subject: subject_scales when given, else scale for all."""
    return torch.tensor(settings.subject_scales or [settings.scale] * count, dtype=torch.float32)


def sigma_range(model, start_percent: float, end_percent: float) -> tuple[float, float] | None:
    if start_percent <= 0.0 and end_percent >= 1.0:
        return None
    if start_percent >= end_percent:
        raise SubjectSetupError(f"start_percent ({start_percent}) must be below end_percent ({end_percent})")
    sampling = model.get_model_object("model_sampling")
    return float(sampling.percent_to_sigma(start_percent)), float(sampling.percent_to_sigma(end_percent))


def compute_dtype(model) -> torch.dtype:
    return getattr(model.model, "manual_cast_dtype", None) or model.model_dtype()


def route_subjects(
    model: comfy.model_patcher.ModelPatcher,
    projections: dict[AttnKey, tuple[torch.Tensor, torch.Tensor]],
    boxes: torch.Tensor,
    settings: ApplySettings,
    recorder: RouteRecorder | None = None,
    negative: dict[AttnKey, tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> comfy.model_patcher.ModelPatcher:
    """A clone of ``model`` whose attn2 blocks at the projections' keys route the subjects; ``model`` is untouched.

    ``projections`` are each layer's [S, T, C] subject keys and (scaled) values in the model's
    compute dtype; ``boxes`` the [S, 4] normalised boxes (whole-image boxes for a kind without a layout).
    ``negative``, shaped like ``projections``, are what the negative rows attend to (routed the same
    way) for kinds whose unconditional pass has tokens of its own; without it they get none.
    """
    bank = SubjectBank(projections, negative)
    routing = SubjectRouting(
        bank=bank,
        bank_patcher=comfy.model_patcher.ModelPatcher(bank, load_device=model.load_device, offload_device=model.offload_device),
        boxes=boxes,
        sigma_range=sigma_range(model, settings.start_percent, settings.end_percent),
        feather=settings.feather,
        auto=AutoRouting.of(settings),
        recorder=recorder,
    )
    patched = model.clone()
    existing = patched.model_options["transformer_options"].get("patches_replace", {}).get("attn2", {})
    for key in projections:
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

