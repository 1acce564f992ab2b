"""A warning on Apply when the attention it patched is no longer the MODEL's that samples.

Another pack that *replaces* (``set_model_attn2_replace``, a DiT block replace) the keys Apply
patched, after Apply, drops the subjects: the image is sampled without them and nothing says
so. At sampling start (an OUTER_SAMPLE wrapper) each patch Apply installed must still be in the
sampling model's ``patches_replace``, as the entry itself or held by the entry that replaced it
(a pack that chains keeps it, e.g. in an attribute or a closure). A key patched again by a later
Apply is checked by that Apply only: its patch holds the earlier subjects.
"""

from __future__ import annotations

import comfy.patcher_extension

from .subject_warnings import show_warnings

WRAPPER_KEY = "multisubject_patch_check"
MAX_DEPTH = 3  # how deep another pack's patch is searched for the one it chains to
MAX_CHILDREN = 32  # attributes, items or closure cells looked at per object


def added_patches(before, after) -> dict[tuple[str, tuple], object]:
    """``{(patch type, key): patch}`` of the ``patches_replace`` entries ``after`` holds and ``before`` does not."""
    def entries(model) -> dict:
        return model.model_options.get("transformer_options", {}).get("patches_replace", {})

    old = entries(before)
    return {(name, key): patch for name, patches in entries(after).items() for key, patch in patches.items()
            if old.get(name, {}).get(key) is not patch}


def _children(obj) -> list:
    if isinstance(obj, (tuple, list, set, frozenset)):
        return list(obj)[:MAX_CHILDREN]
    if isinstance(obj, dict):
        return list(obj.values())[:MAX_CHILDREN]
    children = [getattr(obj, "__self__", None), getattr(obj, "__func__", None)]
    children += [cell.cell_contents for cell in (getattr(obj, "__closure__", None) or ()) if _has_contents(cell)]
    children += list(getattr(obj, "__dict__", {}).values())
    return [c for c in children if c is not None][:MAX_CHILDREN]


def _has_contents(cell) -> bool:
    try:
        cell.cell_contents  # noqa: B018 (an empty cell raises)
    except ValueError:
        return False
    return True


def holds(entry, patch, depth: int = MAX_DEPTH) -> bool:
    """``entry`` is ``patch`` or reaches it through at most ``depth`` attributes, items or closure cells."""
    if entry is patch:
        return True
    if depth == 0 or entry is None or isinstance(entry, (str, bytes, int, float)):
        return False
    return any(holds(child, patch, depth - 1) for child in _children(entry))


class PatchCheck:
    """OUTER_SAMPLE wrapper: warns on Apply's node when the sampling model lost the patches Apply installed."""

    def __init__(self, patches: dict[tuple[str, tuple], object], node_name: str, node_id: str | None):
        self.patches, self.node_name, self.node_id = patches, node_name, node_id

    def without(self, keys) -> PatchCheck:
        return PatchCheck({k: p for k, p in self.patches.items() if k not in keys}, self.node_name, self.node_id)

    def lost(self, model_options: dict) -> list[tuple[str, tuple]]:
        current = model_options.get("transformer_options", {}).get("patches_replace", {})
        return [(name, key) for (name, key), patch in self.patches.items() if not holds(current.get(name, {}).get(key), patch)]

    def __call__(self, executor, *args, **kwargs):
        lost = self.lost(executor.class_obj.model_options)
        if lost:
            name, key = lost[0]
            show_warnings(self.node_name, self.node_id, [
                f"{len(lost)} of the {len(self.patches)} attention layers this node patched were replaced by another node "
                f"after it (e.g. {name} {key}): the subjects are not applied there. Put that node before this one, "
                "or use a version of it that calls the attention it finds"])
        return executor(*args, **kwargs)

    def __deepcopy__(self, memo):
        return self  # holds only references to the patches it checks; a model clone shares it


def watch(before, patched, node_name: str, node_id: str | None) -> None:
    """Make ``patched`` (Apply's output, a clone) check at sampling start that its new patches are still installed.

    An earlier Apply's check keeps only the keys this Apply did not patch again (the new patches hold its subjects)."""
    added = added_patches(before, patched)
    outer = comfy.patcher_extension.WrappersMP.OUTER_SAMPLE
    checks = [check.without(added) for check in patched.get_wrappers(outer, WRAPPER_KEY)]
    patched.remove_wrappers_with_key(outer, WRAPPER_KEY)
    for check in checks + [PatchCheck(added, node_name, node_id)]:
        if check.patches:
            patched.add_wrapper_with_key(outer, WRAPPER_KEY, check)
