"""What Qwen-Image-Edit-2509 and FLUX.2 share as LAMIC families: text groups read from the call itself.

Their text is encoded by core's nodes (TextEncodeQwenImageEditPlus, CLIP Text Encode) around a chat
template, so the groups are not LAMIC's SAD/CEI strings: they follow from the call's own tensors
(the pictures' vision tokens, the left zero padding). The adapter's ``token_layout`` therefore
returns a :class:`CallLayout` that carries the call's text groups, and ``call_text_layout`` hands
them to the kind. Rows of one call whose text groups differ (a positive and a negative of equal
length but different padding) run one by one, each with its own mask.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ....models.lamic.text import TextLayout
from ...dit.token_layout import TokenLayout
from ..base import SubjectSetupError
from .families import FamilyAdapter


@dataclass(frozen=True)
class CallLayout(TokenLayout):
    """A call's token layout plus the text groups of its text tokens."""

    text_groups: TextLayout | None = None


class CallTextFamily(FamilyAdapter):
    """A family whose text groups come from each call (its ``token_layout`` returns a :class:`CallLayout`)."""

    reads_texts = False
    config_class: ClassVar[type]  # the ComfyUI model config (supported_models) this family loads as

    @classmethod
    def accepts(cls, model) -> bool:
        config = getattr(getattr(model, "model", None), "model_config", None)
        return type(config) is cls.config_class

    def check_context(self, context) -> None:
        """Any length: the groups are read from the call."""

    def text_layout(self, sad_texts, cei: str, context_tokens: int, official: bool = True):
        raise SubjectSetupError(f"{self.family}'s text groups come from the encoded context; they need the call's layout")

    def call_text_layout(self, layout, sad_texts, cei: str, official: bool = True):
        return layout.text_groups


def with_text_groups(layout: TokenLayout, text_groups: TextLayout) -> CallLayout:
    fields = {name: getattr(layout, name) for name in layout.__dataclass_fields__}
    return CallLayout(**fields, text_groups=text_groups)


def batch_rows(value: Any, row: int) -> Any:
    """Row ``row`` of every batched tensor in ``value`` (tensors, lists, tuples, dicts); anything else as is."""
    if torch.is_tensor(value):
        return value[row:row + 1] if value.dim() > 0 and value.shape[0] > 1 else value
    if isinstance(value, (list, tuple)):
        return type(value)(batch_rows(v, row) for v in value)
    if isinstance(value, dict):
        return {k: batch_rows(v, row) for k, v in value.items()}
    return value


def row_by_row(wrapper: Callable, differ: Callable[[torch.Tensor], bool]) -> Callable:
    """A FLUX-signature DIFFUSION_MODEL wrapper that calls ``wrapper`` once per row when ``differ(context)``."""

    def rows_wrapper(executor, x, timestep, context, y, guidance, ref_latents, control, transformer_options, **kwargs):
        if x.shape[0] == 1 or not differ(context):
            return wrapper(executor, x, timestep, context, y, guidance, ref_latents, control, transformer_options, **kwargs)
        outs = [wrapper(executor, *batch_rows((x, timestep, context, y, guidance, ref_latents, control), row),
                        transformer_options, **batch_rows(kwargs, row)) for row in range(x.shape[0])]
        return torch.cat(outs)

    return rows_wrapper
