"""Patches that wrap, never replace, what another pack (or an earlier node) put on the same key.

Every kind's patch object derives from :class:`ChainedPatch`, so forwarding ``.to()`` and
``.models()`` to the wrapped patch, and copying it on ``ModelPatcher.clone``, work the same for
attn2 and DiT patches. Cross-attention patches also speak the IPAdapter family's ``.add``
protocol (:class:`ChainedAttn2Patch`), whichever kind put them there.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch

import comfy.ldm.modules.attention as comfy_attention


class ChainedPatch:
    """A patch object holding an optional wrapped ``base`` patch; subclasses say how to rebuild themselves."""

    base: Callable | None = None

    def rebuilt(self, base) -> ChainedPatch:
        """This patch around another ``base`` (same subjects, same state)."""
        raise NotImplementedError

    def own_models(self) -> list:
        """The ModelPatchers that own this patch's own weights."""
        return []

    def __deepcopy__(self, memo):
        # ModelPatcher.clone deep-copies model_options: the wrapped patch gets its own copy semantics
        return self.rebuilt(copy.deepcopy(self.base, memo))

    def to(self, device_or_dtype):
        """Our tensors are owned by ModelPatchers (``own_models``); forward the call to a wrapped patch."""
        if self.base is not None and hasattr(self.base, "to"):
            base = self.base.to(device_or_dtype)
            if base is not self.base:
                return self.rebuilt(base)
        return self

    def models(self) -> list:
        models = self.own_models()
        if self.base is not None and hasattr(self.base, "models"):
            models += self.base.models()
        return models


class ChainedAttn2Patch(ChainedPatch):
    """An attn2 replace patch: its own output (``attend``) plus callbacks added by IPAdapter-family packs.

    IPAdapter+, InstantID, PuLID and forks, finding a patch on their key, call
    ``.add(callback, **kwargs)`` instead of replacing it. Each callback runs as
    ``callback(out, q, k, v, extra_options, **kwargs)`` while the step's sigma lies in
    ``[kwargs["sigma_end"], kwargs["sigma_start"]]``, and its result is added to ``out``, in the order added.
    """

    callbacks: list[tuple[Callable, dict]]

    def add(self, callback: Callable, **kwargs) -> None:
        """The IPAdapter-family chaining protocol (see the class docstring)."""
        self.callbacks.append((callback, kwargs))

    def __deepcopy__(self, memo):
        # a clone's .add must not reach the model it came from
        patch = self.rebuilt(copy.deepcopy(self.base, memo))
        patch.callbacks = copy.deepcopy(self.callbacks, memo)
        return patch

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
        """This patch's own output (the wrapped patch's included)."""
        raise NotImplementedError

    def base_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
        """The wrapped patch, or ComfyUI's own text attention when nothing is wrapped."""
        if self.base is not None:
            return self.base(q, k, v, extra_options)
        return comfy_attention.optimized_attention(q, k, v, extra_options["n_heads"], attn_precision=extra_options.get("attn_precision"),
                                                   transformer_options=extra_options)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
        out = self.attend(q, k, v, extra_options)
        if not self.callbacks:
            return out
        sigmas = extra_options.get("sigmas")
        sigma = float(sigmas.detach()[0]) if sigmas is not None else float("inf")
        for callback, kwargs in self.callbacks:
            if kwargs.get("sigma_end", -float("inf")) <= sigma <= kwargs.get("sigma_start", float("inf")):
                out = out + callback(out, q, k, v, extra_options, **kwargs)
        return out.to(q.dtype)
