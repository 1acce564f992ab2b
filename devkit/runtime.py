"""Where the embedded ComfyUI lives, and how to import it in-process (CPU, before model_management)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parent.parent
COMFYUI_ROOT = Path(os.environ.get("MSP_COMFYUI_ROOT", PACK_ROOT / ".runtime" / "ComfyUI"))
DEFAULT_GOLDEN_ROOT = PACK_ROOT.parent / "shared" / "golden"


def golden_root() -> Path:
    """The folder holding one golden set per kind (msdiffusion/, ssr_encoder/, ...): MSP_GOLDEN_ROOT or ../shared/golden."""
    return Path(os.environ.get("MSP_GOLDEN_ROOT") or DEFAULT_GOLDEN_ROOT)


def golden_dir(kind: str = "msdiffusion") -> Path | None:
    """One kind's golden folder, or None when it has no cases.json."""
    folder = golden_root() / kind
    return folder if (folder / "cases.json").exists() else None


def import_comfy(cpu: bool = True) -> None:
    """ComfyUI importable in-process; ``cpu``: on the CPU whatever GPU there is (the tests), else as ComfyUI picks."""
    if not (COMFYUI_ROOT / "main.py").exists():
        raise RuntimeError(f"no ComfyUI at {COMFYUI_ROOT}: run `make setup` (or set MSP_COMFYUI_ROOT)")
    if str(COMFYUI_ROOT) not in sys.path:
        sys.path.insert(0, str(COMFYUI_ROOT))
    import comfy.cli_args

    comfy.cli_args.args.cpu = cpu
    import comfy.model_management  # noqa: F401  (reads args.cpu at import)
