"""DiT block replacement: a kind's own double/single block code on the rows it acts on, core's blocks elsewhere.

A kind's DIFFUSION_MODEL wrapper decides per model call whether it acts and leaves a
:class:`BlockCall` for the blocks (:func:`run_with_call`); each block's
:class:`BlockReplacement` then runs the kind's :class:`BlockMethod` on the call's rows and
core's block (or the patch another pack put on that block, which it wraps) on the other rows
and on every call the kind left nothing for. The latent token layout of a call is
[text | tokens the method appended to the text | image]; rows the method does not act on never
see the appended tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from ..chaining import ChainedPatch
from ..model_call import positive_row_index

CALL_KEY = "multisubject_dit_call"  # transformer_options entry of one model call: {id(method): BlockCall}
BLOCK_KINDS = ("double", "single")


class BlockMethod(Protocol):
    """A kind's code for one model call's blocks; ``streams`` is its own per-call state."""

    def double(self, block, label: str, img, txt, vec, pe, streams, transformer_options: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """A double block on the method's rows: (img, txt)."""

    def single(self, block, label: str, x, vec, pe, streams, transformer_options: dict) -> torch.Tensor:
        """A single block over cat(text, image) on the method's rows."""

    def own_models(self) -> list:
        """ModelPatchers of the method's own weights, loaded with the MODEL."""


@dataclass(eq=False)
class BlockCall:
    """What one model call leaves for the blocks: the model, the rows the method acts on, the token layout, its streams."""

    model: Any  # the DiT module whose blocks run (executor.class_obj of the DIFFUSION_MODEL wrapper)
    rows: torch.Tensor | None  # batch rows the method acts on (None: every row)
    text_tokens: int  # text tokens of the call, before the appended ones
    appended_tokens: int = 0  # tokens the method appended after the text (rows it does not act on drop them)
    streams: Any = None


def acting_rows(transformer_options: dict, batch: int) -> torch.Tensor | None:
    """The positive rows of a call (None: every row is positive); a method with no negative counterpart acts there."""
    return positive_row_index(transformer_options.get("cond_or_uncond"), batch)


def latent_tokens(x: torch.Tensor, patch: int) -> tuple[int, int]:
    """(height, width) in tokens of a latent ``x`` [B, C, H, W] patchified by ``patch`` (as FLUX pads)."""
    return (x.shape[-2] + patch // 2) // patch, (x.shape[-1] + patch // 2) // patch


def run_with_call(method: BlockMethod, call: BlockCall, transformer_options: dict, run: Callable[[], Any]):
    """``run()`` (the wrapped DIFFUSION_MODEL executor) with ``call`` visible to ``method``'s blocks, and gone after."""
    calls = transformer_options.setdefault(CALL_KEY, {})
    calls[id(method)] = call
    try:
        return run()
    finally:
        calls.pop(id(method), None)
        if not calls:
            transformer_options.pop(CALL_KEY, None)


def block_chains(method: BlockMethod, diffusion_model) -> dict[tuple[str, int], Callable]:
    """``PatchSet.dit`` of ``method``: a :class:`BlockReplacement` on every double and single block, wrapping what is there."""
    chains = {}
    for kind in BLOCK_KINDS:
        for index in range(len(getattr(diffusion_model, f"{kind}_blocks"))):
            chains[(f"{kind}_block", index)] = lambda current, kind=kind, index=index: BlockReplacement(method, kind, index, current)
    return chains


def methods_on(model) -> list:
    """The block methods already installed on ``model`` (a kind refuses to be applied twice where that makes no sense)."""
    replaced = model.model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {})
    found = {}
    for patch in replaced.values():
        while isinstance(patch, ChainedPatch):
            if isinstance(patch, BlockReplacement):
                found.setdefault(id(patch.method), patch.method)
            patch = patch.base
    return list(found.values())


class BlockReplacement(ChainedPatch):
    """``patches_replace["dit"]`` entry of one block: the method's block when the call is its, else the block (or wrapped patch)."""

    def __init__(self, method: BlockMethod, kind: str, index: int, base=None):
        self.method, self.kind, self.index, self.base = method, kind, index, base
        self.label = f"{kind}_blocks.{index}"

    def rebuilt(self, base) -> BlockReplacement:
        return BlockReplacement(self.method, self.kind, self.index, base)

    def own_models(self) -> list:
        return self.method.own_models()

    def __call__(self, args, extra):
        original = extra["original_block"]
        if self.base is not None:
            return self.base(args, {**extra, "original_block": lambda a: self.run(a, original)})
        return self.run(args, original)

    def run(self, args, original):
        options = args["transformer_options"]
        call = options.get(CALL_KEY, {}).get(id(self.method))
        if call is None:
            return original(args)
        block = getattr(call.model, f"{self.kind}_blocks")[self.index]
        if self.kind == "double":
            return self._double(block, args, original, call, options)
        return self._single(block, args, original, call, options)

    def _double(self, block, args, original, call: BlockCall, options: dict):
        img, txt, vec, pe = args["img"], args["txt"], args["vec"], args["pe"]
        if call.rows is None:
            img, txt = self.method.double(block, self.label, img, txt, vec, pe, call.streams, options)
            return {"img": img, "txt": txt}
        rows = call.rows.to(img.device)
        plain = _complement(rows, img.shape[0])
        out_img, out_txt = img.clone(), txt.clone()
        text = call.text_tokens
        plain_pe = _without_appended(pe, text, call.appended_tokens)
        done = original({"img": img[plain], "txt": txt[plain, :text], "vec": vec[plain], "pe": _rows(plain_pe, plain),
                         "attn_mask": None, "transformer_options": options})
        out_img[plain], out_txt[plain, :text] = done["img"], done["txt"]
        out_img[rows], out_txt[rows] = self.method.double(block, self.label, img[rows], txt[rows], vec[rows], _rows(pe, rows),
                                                          call.streams, options)
        return {"img": out_img, "txt": out_txt}

    def _single(self, block, args, original, call: BlockCall, options: dict):
        x, vec, pe = args["img"], args["vec"], args["pe"]
        if call.rows is None:
            return {"img": self.method.single(block, self.label, x, vec, pe, call.streams, options)}
        rows = call.rows.to(x.device)
        plain = _complement(rows, x.shape[0])
        out = x.clone()
        text, appended = call.text_tokens, call.appended_tokens
        plain_x = torch.cat((x[plain, :text], x[plain, text + appended:]), dim=1)
        done = original({"img": plain_x, "vec": vec[plain], "pe": _rows(_without_appended(pe, text, appended), plain),
                         "attn_mask": None, "transformer_options": options})["img"]
        out[plain, :text], out[plain, text + appended:] = done[:, :text], done[:, text:]
        out[rows] = self.method.single(block, self.label, x[rows], vec[rows], _rows(pe, rows), call.streams, options)
        return {"img": out}


def _complement(rows: torch.Tensor, batch: int) -> torch.Tensor:
    keep = torch.ones(batch, dtype=torch.bool, device=rows.device)
    keep[rows] = False
    return keep.nonzero().flatten()


def _rows(pe: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    return pe if pe.shape[0] == 1 else pe[rows]


def _without_appended(pe: torch.Tensor, text: int, appended: int) -> torch.Tensor:
    return pe if not appended else torch.cat((pe[:, :, :text], pe[:, :, text + appended:]), dim=2)
