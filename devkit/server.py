"""A real ComfyUI server (the embedded 0.3.75) with the pack and the test nodes, in a throwaway base directory."""

from __future__ import annotations

import os
from pathlib import Path

from scripts.embedded_comfyui import EmbeddedComfyUI, PromptRefused, prepare_base

from .runtime import COMFYUI_ROOT

__all__ = ["ComfyServer", "PromptRefused"]


class ComfyServer(EmbeddedComfyUI):
    def __init__(self, base: Path, port: int | None = None, test_nodes: bool = True):
        # the tiny models' ops are too small to gain from threads; this avoids oversubscription
        env = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        super().__init__(base / "server.log", base=prepare_base(base, test_nodes), port=port, comfyui=COMFYUI_ROOT,
                         env=env, cpu=True)  # the same ComfyUI, on the same device, as the in-process tests
