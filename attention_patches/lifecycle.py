"""A kind's patch set on a clone of the MODEL, and its per-run caches, owned in one place.

A kind describes what it puts on the model (a :class:`PatchSet`); :func:`patched_clone` clones
the MODEL (the incoming one is never touched), chains each patch with whatever another pack or
an earlier node put on the same key, adds the wrappers, and registers every per-run owner with
ComfyUI's own callbacks: ``ON_PRE_RUN`` starts its run, ``ON_CLEANUP`` (called by the guider in
a ``finally``, so also after an error or an interrupt) frees what the run cached.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import comfy.model_patcher
from comfy.patcher_extension import CallbacksMP

CALLBACK_KEY = "comfyui_multisubject"

Chain = Callable[[Any], Any]  # the patch to install, given the one already on that key (or None)


@runtime_checkable
class RunScoped(Protocol):
    """An object holding state for one sampling run (device copies, routes, histories, reference caches)."""

    def start_run(self) -> None:
        """A sampling run starts: reset what an earlier run left."""

    def release_caches(self) -> None:
        """The run ended (or failed): free everything it cached."""

    def held_caches(self) -> int:
        """How many cache entries are held now (0 once released)."""


@dataclass(frozen=True)
class PatchSet:
    """Everything one Apply puts on a MODEL.

    ``attn2``: ComfyUI attn2 keys (block, number, index) -> chain; ``dit``: ("double_block" |
    "single_block", index) -> chain; ``wrappers``: (``WrappersMP`` type, wrapper) pairs, added
    under the pack's key; ``run_scoped``: the owners of per-run state.
    """

    attn2: Mapping[tuple, Chain] = field(default_factory=dict)
    dit: Mapping[tuple[str, int], Chain] = field(default_factory=dict)
    wrappers: tuple[tuple[str, Callable], ...] = ()
    run_scoped: tuple[RunScoped, ...] = ()


@dataclass(frozen=True)
class _RunCallback:
    """ON_PRE_RUN / ON_CLEANUP callback of one owner (a small object: clones copy the callback lists)."""

    owner: RunScoped
    starts: bool

    def __call__(self, patcher) -> None:
        if self.starts:
            self.owner.start_run()
        else:
            self.owner.release_caches()


def patched_clone(model: comfy.model_patcher.ModelPatcher, patches: PatchSet) -> comfy.model_patcher.ModelPatcher:
    """A clone of ``model`` carrying ``patches``; ``model`` is untouched."""
    clone = model.clone()
    replace = clone.model_options["transformer_options"].get("patches_replace", {})
    attn2, dit = replace.get("attn2", {}), replace.get("dit", {})
    for key, chain in patches.attn2.items():
        clone.set_model_attn2_replace(chain(attn2.get(key, attn2.get(key[:2]))), *key)
    for (name, index), chain in patches.dit.items():
        clone.set_model_patch_replace(chain(dit.get((name, index))), "dit", name, index)
    for wrapper_type, wrapper in patches.wrappers:
        if wrapper not in clone.get_wrappers(wrapper_type, CALLBACK_KEY):  # a second Apply of the same kind
            clone.add_wrapper_with_key(wrapper_type, CALLBACK_KEY, wrapper)
    for owner in patches.run_scoped:
        register_run_scoped(clone, owner)
    return clone


def register_run_scoped(model: comfy.model_patcher.ModelPatcher, owner: RunScoped) -> None:
    """Start ``owner``'s run at ComfyUI's ON_PRE_RUN and free its caches at ON_CLEANUP (also after an error) on ``model``,
    a clone the caller made (for kinds that install their patches themselves)."""
    model.add_callback_with_key(CallbacksMP.ON_PRE_RUN, CALLBACK_KEY, _RunCallback(owner, starts=True))
    model.add_callback_with_key(CallbacksMP.ON_CLEANUP, CALLBACK_KEY, _RunCallback(owner, starts=False))


def run_scoped_of(model: comfy.model_patcher.ModelPatcher) -> list[RunScoped]:
    """Every per-run owner registered on ``model`` by :func:`patched_clone` / :func:`register_run_scoped` (each once)."""
    owners = {}
    for callback in model.get_callbacks(CallbacksMP.ON_CLEANUP, CALLBACK_KEY):
        if isinstance(callback, _RunCallback):
            owners.setdefault(id(callback.owner), callback.owner)
    return list(owners.values())
