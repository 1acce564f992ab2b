"""Shared by the Qwen-Image-Edit and FLUX.2 LAMIC tests: the kind's patch on a tiny model, run by ComfyUI's sampler."""

from __future__ import annotations

import torch

import comfy.sample

from devkit.pack import pack

masked = pack("attention_patches.dit.masked_attention")
lamic_patch = pack("attention_patches.kinds.lamic.patch")
lamic_encoder = pack("attention_patches.kinds.lamic.encoder")

LEFT, RIGHT = (0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0)


def stage_classes(adapter, boxes, strengths=None):
    """The kind's classes_for (LamicMasks) for ``boxes``; records every call layout it was asked for."""
    masks = lamic_encoder.LamicMasks(adapter, [], "", torch.tensor(boxes), ((),) * len(boxes), strengths, True)
    layouts = []

    def classes_for(layout, stage):
        layouts.append(layout)
        return masks(layout, stage)

    classes_for.layouts = layouts
    return classes_for


class BatchProbe:
    """Records the batch size of every masked attention call (both CFG rows in one call or not)."""

    def __init__(self):
        self.batches = []
        self.recorder = self  # the patch starts each run on its probe's recorder

    def start_run(self):
        self.batches = []

    def __call__(self, layout, q, k, classes, options):
        self.batches.append(q.shape[0])


def patched(model, adapter, boxes, first_stage_ratio=1.0, strengths=None, probe=None):
    """A clone of ``model`` with LAMIC's wrapper and masked attention for ``boxes`` (reference i in box i)."""
    classes_for = stage_classes(adapter, boxes, strengths)
    patch = lamic_patch.LamicPatch(adapter, len(boxes), classes_for, first_stage_ratio, probe=probe)
    clone = model.clone()
    patch.install(clone)
    return clone, classes_for


class DenseAttention(masked.MaskedAttention):
    """The reference path as an override: one attention call with the dense additive [S, S] mask (a MaskedAttention,
    so a per-call restriction uses it instead of wrapping it)."""

    def __call__(self, func, *args, **kwargs):
        classes = (kwargs.get("transformer_options") or {}).get(masked.CLASSES_KEY)
        if classes is None:
            return func(*args, **kwargs)
        q, k, v, heads, *rest = args
        kwargs = {key: value for key, value in kwargs.items() if key != "mask"}
        return masked.dense_attention(func, q, k, v, heads, classes, **kwargs)


def with_dense_attention(model):
    """``model`` (a patched clone) with its masked-attention override swapped for the dense reference path."""
    clone = model.clone()
    clone.model_options["transformer_options"]["optimized_attention_override"] = DenseAttention()
    return clone


def sample(model, latent, positive, negative, cfg=1.0, steps=1, seed=0):
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return comfy.sample.sample(model, noise, steps, cfg, "euler", "simple", positive, negative, latent,
                                   disable_pbar=True, seed=seed)


def with_reference(conditioning, index, latent):
    """A copy of ``conditioning`` whose reference ``index`` is ``latent``."""
    out = []
    for cond, extra in conditioning:
        refs = list(extra["reference_latents"])
        refs[index] = latent
        out.append([cond, {**extra, "reference_latents": refs}])
    return out
