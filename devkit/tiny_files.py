"""Tiny stand-in model *files*, by the models folder a workflow names them in.

The example tests and ``make demo TINY=1`` both run the shipped examples on tiny models: the
loaders ComfyUI ships (checkpoint, CLIP vision, UNet, ...) are swapped for the test-only tiny
loaders, but Load Subject Encoder and LoraLoader read real files, so those are written here
with the real key layouts at tiny widths (ComfyUI must be importable: see devkit.runtime).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


def _ms_diffusion(path: Path) -> None:
    from . import tiny_models

    tiny_models.save_subject_encoder(path)


def _lora(path: Path) -> None:
    from . import tiny_models

    tiny_models.save_tiny_lora(path)


def _ssr_encoder(path: Path) -> None:
    """The official pair (pytorch_model.bin + pytorch_model_1.bin) side by side, whichever of them is asked for."""
    from . import tiny_sd15

    tiny_sd15.save_ssr_files(path.parent, tiny_sd15.ssr_manifest(), "official")


def _fastcomposer(path: Path) -> None:
    from . import tiny_sd15
    from .tiny_sd15_fastcomposer import save_fastcomposer

    save_fastcomposer(path, unet=tiny_sd15.tiny_sd15_unet())  # fingerprinted with the SD1.5 stand-in's UNet


def _anystory(path: Path) -> None:
    import torch

    from . import anystory_tiny

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(anystory_tiny.tiny_anystory(base_redux=False), path)  # Redux from the workflow's style model


WRITERS = {"msdiffusion": _ms_diffusion, "loras": _lora, "ssr_encoder": _ssr_encoder, "fastcomposer": _fastcomposer,
           "anystory": _anystory}


def needs_file(folder: str) -> bool:
    """Whether a model in this folder is read from a file even with the tiny loaders (no stand-in node replaces it)."""
    return folder in WRITERS


def write_tiny_files(models_dir: str | Path, files: Iterable[tuple[str, str]]) -> list[Path]:
    """Write a tiny file for each ``(folder, name)`` a stand-in loader cannot replace, unless it is there; the paths written."""
    written = []
    for folder, name in files:
        path = Path(models_dir) / folder / name
        if folder in WRITERS and not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            WRITERS[folder](path)
            written.append(path)
    return written
