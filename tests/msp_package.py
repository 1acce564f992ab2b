"""Import the pack under one fixed package name, whatever the checkout folder is called."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

PACK_NAME = "comfyui_multisubject"
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
