"""Where a UNet's cross-attention blocks are, and the attn2 patch every kind's cross-attention patch derives from."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..chaining import ChainedAttn2Patch
from ..layer_map import AttnKey


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


def cross_attention_blocks(model) -> dict[AttnKey, torch.nn.Module]:
    """Every cross-attention (attn2) of the UNet under ComfyUI's patch keys ("input"/"middle"/"output", block, index)."""
    diffusion_model = model.get_model_object("diffusion_model")
    blocks = {}
    stages = [("input", i, b) for i, b in enumerate(getattr(diffusion_model, "input_blocks", []))]
    stages += [("middle", 0, getattr(diffusion_model, "middle_block", []))]
    stages += [("output", i, b) for i, b in enumerate(getattr(diffusion_model, "output_blocks", []))]
    for name, number, stage in stages:
        for module in stage:
            for index, block in enumerate(getattr(module, "transformer_blocks", [])):
                if getattr(block, "attn2", None) is not None:
                    blocks[(name, number, index)] = block.attn2
    return blocks


class CrossAttentionPatch(ChainedAttn2Patch):
    """One attn2 patch per block holding every Apply's owner (subjects, people...) of one kind.

    A second Apply of the same kind joins the patch already there, unless IPAdapter-family
    callbacks were added since (then it wraps it, keeping their order); any other patch on the key
    is wrapped (``base``). Subclasses say how to rebuild themselves (``with_owners``) and attend.
    """

    key: AttnKey
    owners: tuple

    def with_owners(self, owners: tuple, base: Callable | None) -> CrossAttentionPatch:
        """This patch with other owners around another ``base`` (no callbacks)."""
        raise NotImplementedError

    def rebuilt(self, base) -> CrossAttentionPatch:
        patch = self.with_owners(self.owners, base)
        patch.callbacks = self.callbacks
        return patch

    def joined(self, owner) -> CrossAttentionPatch:
        if self.callbacks:
            return self.with_owners((owner,), self)
        return self.with_owners(self.owners + (owner,), self.base)


def attn2_chain(patch_type: type[CrossAttentionPatch], owner, make: Callable[[Callable | None], CrossAttentionPatch]):
    """The lifecycle chain of one key: join a ``patch_type`` patch already there, else ``make(base=current)``."""
    def chain(current):
        if isinstance(current, patch_type):
            return current.joined(owner)
        return make(current)
    return chain
