"""RoPE position-id patches for DiT models.

FLUX's ``post_input`` patches see the image ids of one call, not the sampling state, so the
patch here is switched on only while its owner's model call runs (:func:`reference_index_limit`):
a patched model outside its sampling window, or another model sharing the patch list, keeps its
own ids.
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar

_LIMIT: ContextVar[float | None] = ContextVar("msp_reference_index_limit", default=None)


@contextlib.contextmanager
def reference_index_limit(limit: float | None):
    """While active, :class:`ClampReferenceIndex` caps the first id axis of image tokens at ``limit`` (None: off)."""
    token = _LIMIT.set(limit)
    try:
        yield
    finally:
        _LIMIT.reset(token)


class ClampReferenceIndex:
    """``post_input`` patch: caps ``img_ids[..., 0]`` while :func:`reference_index_limit` is active.

    With ComfyUI's ``index`` reference method, reference k gets ids (k * scale, y, x); capping the first
    axis at ``scale`` gives every reference the same (scale, y, x) ids while the target keeps 0.
    """

    def __deepcopy__(self, memo):
        return self

    def __call__(self, args: dict) -> dict:
        limit = _LIMIT.get()
        if limit is None or args.get("img_ids") is None:
            return args
        img_ids = args["img_ids"].clone()
        img_ids[..., 0] = img_ids[..., 0].clamp(max=limit)
        return {**args, "img_ids": img_ids}


def install_clamp(model) -> None:
    """Add the clamp to ``model``'s post_input patches once (a clone; other packs' patches stay)."""
    patches = model.model_options.get("transformer_options", {}).get("patches", {}).get("post_input", [])
    if not any(isinstance(p, ClampReferenceIndex) for p in patches):
        model.set_model_post_input_patch(ClampReferenceIndex())
