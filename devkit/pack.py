"""Import the pack under one fixed package name, whatever the checkout folder is called."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path

PACK_NAME = "comfyui_multisubject"
# the pack's pure modules without ComfyUI, under a name of their own, so a host that imports the pack itself
# (ComfyUI, the tests) keeps its copy untouched
BARE_PACK_NAME = "comfyui_multisubject_bare"
PACK_ROOT = Path(__file__).resolve().parent.parent


def load_pack():
    if PACK_NAME not in sys.modules:
        spec = importlib.util.spec_from_file_location(PACK_NAME, PACK_ROOT / "__init__.py", submodule_search_locations=[str(PACK_ROOT)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACK_NAME] = module
        spec.loader.exec_module(module)
    return sys.modules[PACK_NAME]


def pack(name: str):
    """A submodule of the pack, e.g. ``pack("attention_patches.routing")``."""
    load_pack()
    return importlib.import_module(f"{PACK_NAME}.{name}")


def bare_module(name: str):
    """``name`` of the pack (e.g. ``"attention_patches.layout"``) from a bare package whose ``__init__`` (needing
    ComfyUI) never runs: for tools that use the pack's pure modules only."""
    if BARE_PACK_NAME not in sys.modules:
        package = types.ModuleType(BARE_PACK_NAME)
        package.__path__ = [str(PACK_ROOT)]
        sys.modules[BARE_PACK_NAME] = package
    return importlib.import_module(f"{BARE_PACK_NAME}.{name}")
