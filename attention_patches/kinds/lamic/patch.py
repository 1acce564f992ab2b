"""LAMIC inside a ComfyUI model call: one DIFFUSION_MODEL wrapper per patched MODEL.

Per call the wrapper finds the step in the run's schedule (the stage rule), checks the text, takes
the reference latents (the conditioning's, from ReferenceLatent, or the ones Encode Reference
made), applies each reference's enhance factor to its normalised latent, computes the
[text | target | references] layout and leaves one :class:`TokenClasses` in
``transformer_options``: every attention of the call (all blocks, both CFG rows) reads it through
the masked-attention override. Outside the start/end window the call runs unpatched.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

import comfy.patcher_extension

from ....models.lamic.schedule import stage_of_step
from ...dit import masked_attention
from ...dit.masked_attention import TokenClasses
from ...dit.token_layout import TokenLayout
from ...patch import sampling_step
from ..base import SubjectSetupError
from ...dit.attention_share import reference_attention
from .families import WRAPPER_KEY, FamilyAdapter

log = logging.getLogger("comfyui_multisubject.lamic")

MAX_CACHED_LAYOUTS = 8


@dataclass(frozen=True)
class Window:
    """Where in the sampling the masks act, as fractions of the run's steps (start/end_percent)."""

    start: float = 0.0
    end: float = 1.0

    def contains(self, step: int, steps: int) -> bool:
        position = step / max(steps, 1)
        return self.start <= position < self.end or (self.end >= 1.0 and position >= self.start)


class LamicPatch:
    """Shared (never copied) by every clone of one Apply: the wrapper and its per-layout cache.

    ``classes_for(layout, stage)`` builds the mask structure of one layout and stage (the kind gives it
    from LAMIC's groups); ``references``, when given, are normalised latents [1, C, h, w] that
    Encode Reference made, used when the conditioning carries none.
    """

    def __init__(self, adapter: FamilyAdapter, count: int, classes_for: Callable[[TokenLayout, int], TokenClasses],
                 first_stage_ratio: float, enhance: Sequence[float] | None = None,
                 references: Sequence[torch.Tensor] | None = None, window: Window = Window(), probe: Callable | None = None):
        self.adapter = adapter
        self.count = count
        self.classes_for = classes_for
        self.first_stage_ratio = first_stage_ratio
        self.enhance = tuple(enhance) if enhance is not None else (1.0,) * count
        self.references = tuple(references) if references is not None else None
        self.window = window
        self.probe = probe
        self._cache: dict[tuple[TokenLayout, int], TokenClasses] = {}
        self.stages_seen: list[int] = []  # the stage of every masked call of the latest run (observable)

    def __deepcopy__(self, memo):
        return self

    def install(self, model) -> None:
        self.adapter.install(model, self.wrapper)
        # ComfyUI's own run callbacks (ON_CLEANUP also runs after an error or an interrupt)
        model.add_callback_with_key(comfy.patcher_extension.CallbacksMP.ON_PRE_RUN, WRAPPER_KEY, self.on_pre_run)
        model.add_callback_with_key(comfy.patcher_extension.CallbacksMP.ON_CLEANUP, WRAPPER_KEY, self.on_cleanup)

    def start_run(self) -> None:
        """A sampling run starts: the stage record and the preview's measurements start afresh."""
        self.stages_seen = []
        self._cache.clear()
        if self.probe is not None:
            self.probe.recorder.start_run()

    def release_caches(self) -> None:
        """The run ended (or failed): free the per-layout class tables and their device copies."""
        self._cache.clear()

    def held_caches(self) -> int:
        return len(self._cache)

    def on_pre_run(self, patcher) -> None:
        self.start_run()

    def on_cleanup(self, patcher) -> None:
        self.release_caches()

    def classes(self, layout: TokenLayout, stage: int) -> TokenClasses:
        key = (layout, stage)
        if key not in self._cache:
            if len(self._cache) >= MAX_CACHED_LAYOUTS:
                del self._cache[next(iter(self._cache))]
            classes = self.classes_for(layout, stage)
            if classes.tokens != layout.total:
                raise SubjectSetupError(f"the mask covers {classes.tokens} tokens but the model call has {layout.total}")
            classes.probe = functools.partial(self.probe, layout) if self.probe is not None else None
            self._cache[key] = classes
        return self._cache[key]

    def reference_latents(self, ref_latents, batch: int, device, dtype) -> list[torch.Tensor]:
        """The call's references: the conditioning's, or Encode Reference's; exactly one reference per box."""
        given = self.adapter.reference_latents(ref_latents)
        if given and self.references is not None:
            raise SubjectSetupError(
                "the references arrive twice: the conditioning carries reference latents (ReferenceLatent) and Encode "
                "Reference encoded them too. Disconnect Encode Reference's vae input, or remove the ReferenceLatent nodes")
        if not given and self.references is not None:
            given = [r.to(device, dtype).expand(batch, *r.shape[1:]) for r in self.references]
        if not given:
            raise SubjectSetupError(
                f"LAMIC needs the references: this {self.adapter.family} call has none; {self.adapter.missing_references}")
        if len(given) != self.count:
            raise SubjectSetupError(f"the conditioning carries {len(given)} reference latent(s) for {self.count} box(es); "
                                    "give one ReferenceLatent per Encode Reference, in the same order")
        return [r * e if e != 1.0 else r for r, e in zip(given, self.enhance)]

    def check_channels(self, refs: Sequence[torch.Tensor], channels: int) -> None:
        """References from another model's VAE (FLUX.1's 16 channels on FLUX.2's 128, or the reverse) are named."""
        for number, ref in enumerate(refs, start=1):
            if ref.shape[1] != channels:
                raise SubjectSetupError(
                    f"reference {number} is a {ref.shape[1]}-channel latent but this {self.adapter.family} model works on "
                    f"{channels} channels: the references were encoded for another model. Load the model the workflow is "
                    "made for, or encode the references with this model's VAE")

    def wrapper(self, executor, x, timestep, context, y, guidance, ref_latents, control, transformer_options, **kwargs):
        schedule = transformer_options.get("sample_sigmas")
        steps = max(len(schedule) - 1, 1) if schedule is not None else 1
        step = sampling_step(transformer_options)
        if not self.window.contains(step, steps):
            return executor(x, timestep, context, y, guidance, ref_latents, control, transformer_options, **kwargs)
        if not self.adapter.reference_latents(ref_latents) and self.references is None and only_negative_rows(transformer_options):
            # a negative prompt without ReferenceLatent (plain CFG): nothing to place, its rows run unmasked
            return executor(x, timestep, context, y, guidance, ref_latents, control, transformer_options, **kwargs)
        refs = self.reference_latents(ref_latents, x.shape[0], x.device, x.dtype)
        self.check_channels(refs, x.shape[1])
        self.adapter.check_context(context)
        stage = stage_of_step(step, steps, self.first_stage_ratio)
        layout = self.adapter.token_layout(x, context, refs)
        classes = self.classes(layout, stage)
        self.stages_seen.append(stage)
        with masked_attention.restricted(transformer_options, classes), self.adapter.id_context():
            return executor(x, timestep, context, y, guidance, refs, control, transformer_options, **self.adapter.call_kwargs(kwargs))


UNCOND = 1  # ComfyUI's cond_or_uncond marker of a negative chunk


def only_negative_rows(transformer_options: dict) -> bool:
    chunks = transformer_options.get("cond_or_uncond") or ()
    return bool(chunks) and all(chunk == UNCOND for chunk in chunks)


class AttentionShareProbe:
    """Records, for Router Mask Preview, where each reference's attention went (one double block per call).

    Measured on the middle double block only, from the queries and keys the model attends with; each
    reference's map is scaled to a maximum of 1 (the in-box share does not depend on that scale).
    """

    def __init__(self, recorder):
        self.recorder = recorder

    def __deepcopy__(self, memo):
        return self

    def __call__(self, layout: TokenLayout, q, k, classes, options: dict) -> None:
        index = options.get("block_index")
        if options.get("block_type") != "double" or index != options.get("total_blocks", 1) // 2:
            return
        with torch.no_grad():
            maps = reference_attention(q, k, classes, layout.target_span, layout.reference_spans)
            maps = maps / maps.amax(-1, keepdim=True).clamp_min(1e-12)
        height, width = layout.target_grid
        self.recorder.add(sampling_step(options), height, width, maps, f"double_blocks.{index}")
