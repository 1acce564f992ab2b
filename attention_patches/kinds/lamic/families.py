"""The adapter seam of the LAMIC kind: what differs between the in-context models it binds.

LAMIC's groups and masks are model-independent (``models/lamic``). A :class:`FamilyAdapter`
says, for one model family: which ComfyUI model it accepts; where the text pieces (SAD_1..n,
CEI) and the padding group sit in the text part of the joint sequence; how the reference tokens
follow the target (from the call's reference latents); which RoPE id patch it needs; and how the
per-call hook gets in. The kind talks only to this interface; ``kontext``, ``qwen`` and ``flux2``
implement it, and :func:`adapter_for` picks one.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch

import comfy.patcher_extension

from ....models.lamic.text import TextLayout
from ...dit.token_layout import TokenLayout, joint_layout
from ..base import SubjectSetupError

WRAPPER_KEY = "comfyui_multisubject_lamic"


class FamilyAdapter(ABC):
    """One model family (FLUX.1 Kontext, Qwen-Image-Edit-2509, FLUX.2 [dev]) as the LAMIC kind sees it."""

    family: ClassVar[str]  # for messages, e.g. "FLUX.1 Kontext [dev]"
    patch_size: ClassVar[int] = 2  # latent pixels per token side
    reads_texts: ClassVar[bool] = True  # SAD/CEI come from Encode Reference's texts and Apply's prompt
    missing_references: ClassVar[str] = ("connect the VAE to each Encode Reference, or add core's ReferenceLatent node(s) to "
                                         "the positive conditioning (a FLUX.1 [dev] model without references cannot place them)")
    text_tokens: ClassVar[int | None] = None  # the fixed text length the groups address (checked on Apply), if any

    @classmethod
    @abstractmethod
    def accepts(cls, model) -> bool:
        """True if ``model`` (a ModelPatcher) is this family's model."""

    @staticmethod
    def diffusion_model(model):
        return model.get_model_object("diffusion_model") if hasattr(model, "get_model_object") else None

    @abstractmethod
    def check_context(self, context: torch.Tensor) -> None:
        """Raise a SubjectSetupError naming the fix when the encoded text cannot carry LAMIC's groups."""

    @abstractmethod
    def text_layout(self, sad_texts: Sequence[str], cei: str, context_tokens: int, official: bool = True) -> TextLayout:
        """Which text group (SAD_i, CEI, EPrt) each of the call's ``context_tokens`` text tokens belongs to
        (``models.lamic.text``); ``official``: LAMIC's own span rules where the family has them."""

    def call_text_layout(self, layout: TokenLayout, sad_texts: Sequence[str], cei: str, official: bool = True) -> TextLayout:
        """The text groups of one call's layout; families whose groups come from the call's tensors override it."""
        return self.text_layout(sad_texts, cei, layout.text, official)

    def reference_latents(self, ref_latents) -> list[torch.Tensor]:
        """The call's reference latents in reference order (the conditioning's, as the model receives them)."""
        return list(ref_latents or ())

    def token_layout(self, x: torch.Tensor, context: torch.Tensor, ref_latents: Sequence[torch.Tensor]) -> TokenLayout:
        """[text | target | references] of one call."""
        return joint_layout(context.shape[1], x, ref_latents, self.patch_size)

    def call_kwargs(self, kwargs: dict) -> dict:
        """The model call's extra kwargs while the mask is on (e.g. the reference id method)."""
        return kwargs

    def id_context(self) -> contextlib.AbstractContextManager:
        """Active around a masked model call: the id patch's switch (none by default)."""
        return contextlib.nullcontext()

    def install_id_patch(self, model) -> None:
        """Register the RoPE id patch this family needs on ``model`` (a clone); none by default."""

    def install(self, model, wrapper: Callable[..., Any]) -> None:
        """Hook ``wrapper`` around every diffusion-model call of ``model`` (a clone); it restricts the call's attention."""
        model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY, wrapper)
        self.install_id_patch(model)


ADAPTERS: list[type[FamilyAdapter]] = []


def register(adapter: type[FamilyAdapter]) -> type[FamilyAdapter]:
    """Class decorator: make ``adapter`` one of the families :func:`adapter_for` tries, in import order."""
    if adapter not in ADAPTERS:
        ADAPTERS.append(adapter)
    return adapter


def adapter_for(model) -> FamilyAdapter:
    """The adapter of ``model``'s family, or an error listing the families LAMIC supports."""
    for adapter in ADAPTERS:
        if adapter.accepts(model):
            return adapter()
    flux = FamilyAdapter.diffusion_model(model)
    what = type(flux).__name__ if flux is not None else type(model).__name__
    families = ", ".join(a.family for a in ADAPTERS)
    raise SubjectSetupError(f"LAMIC places references with an in-context model ({families}); this MODEL is {what}. "
                            "Load FLUX.1 Kontext [dev] (flux1-kontext-dev.safetensors) with Load Diffusion Model")
