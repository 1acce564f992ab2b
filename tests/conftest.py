"""Shared fixtures: the real ComfyUI in-process on CPU, the pack, tiny models, the goldens."""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from pathlib import Path

import pytest

from devkit.runtime import golden_dir, golden_root, import_comfy

import_comfy()

import torch  # noqa: E402

TORCH_THREADS = 1  # the tiny models' ops are too small to gain from threads; avoids oversubscription
torch.set_num_threads(TORCH_THREADS)

from devkit.pack import load_pack, pack  # noqa: E402

load_pack()


@pytest.fixture(autouse=True)
def one_torch_thread():
    """A test that takes more threads for a big model gives them back: two threads on the tiny models
    that follow made them 4x slower on two busy cores."""
    yield
    if torch.get_num_threads() != TORCH_THREADS:
        torch.set_num_threads(TORCH_THREADS)


class GoldenSet:
    """One kind's official-module outputs: its folder, its cases.json and its tensor files."""

    def __init__(self, folder: Path):
        self.path = folder
        self.cases = json.loads((folder / "cases.json").read_text())

    def tensors(self, name: str) -> dict:
        from safetensors.torch import load_file

        return load_file(str(self.path / f"{name}.safetensors"))


def load_golden(kind: str) -> GoldenSet:
    """The golden set of ``kind`` under the golden root; missing goldens fail in CI and skip elsewhere."""
    folder = golden_dir(kind)
    if folder is None:
        where = f"{golden_root() / kind} (golden root from MSP_GOLDEN_ROOT, default ../shared/golden)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"the {kind} goldens are missing: expected {where}")
        pytest.skip(f"{kind} goldens not found: {where}")
    return GoldenSet(folder)


@pytest.fixture(scope="session")
def golden_set():
    """``golden_set("ssr_encoder")``: a kind's goldens (see load_golden)."""
    return load_golden


@pytest.fixture(scope="session")
def golden():
    """The MS-Diffusion goldens."""
    return load_golden("msdiffusion")


@pytest.fixture(scope="session")
def tiny():
    from devkit import tiny_models

    return tiny_models


@pytest.fixture(scope="session")
def tiny_unet(tiny):
    return tiny.tiny_sdxl_model()


@pytest.fixture(scope="session")
def tiny_clip(tiny):
    return tiny.tiny_sdxl_clip()


@pytest.fixture(scope="session")
def tiny_vision(tiny):
    return tiny.tiny_clip_vision()


@pytest.fixture(scope="session")
def tiny_encoder_path(tiny, tmp_path_factory):
    return tiny.save_subject_encoder(tmp_path_factory.mktemp("msdiffusion") / "tiny_ms_adapter.safetensors")


@pytest.fixture(scope="session")
def tiny_encoder(tiny_encoder_path):
    return pack("attention_patches.kinds.registry").load_subject_encoder(tiny_encoder_path)


@pytest.fixture(scope="session")
def comfy_server(tiny, tmp_path_factory):
    """One real ComfyUI server for the session: the pack, the test nodes, tiny model files, two references."""
    import numpy as np
    from PIL import Image

    from devkit.server import ComfyServer

    base = tmp_path_factory.mktemp("comfyui")
    server = ComfyServer(base)
    tiny.save_subject_encoder(base / "models" / "msdiffusion" / "ms_adapter.bin")
    tiny.save_subject_encoder(base / "models" / "msdiffusion" / "tiny_ms_adapter.safetensors")
    for i, name in enumerate(("dog.png", "cat.png")):
        pixels = np.random.default_rng(i).integers(0, 255, (96, 80, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(base / "input" / name)
    server.start()
    yield server
    server.stop()


SLOW_FIXTURES = frozenset({"comfy_server", "examples_server", "server_without_models", "workers", "browser"})
SUITE_BUDGET_SECONDS = 15 * 60  # what CI allows the whole suite on 2 cores
_durations: dict[str, float] = defaultdict(float)
_suite_start = time.monotonic()


def pytest_collection_modifyitems(config, items):
    """A test that needs a real server or browser is ``slow`` (``-m "not slow"``: the fast unit subset)."""
    for item in items:
        if SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def pytest_runtest_logreport(report):
    _durations[report.nodeid.split("::")[0]] += report.duration


def pytest_terminal_summary(terminalreporter):
    """The suite's wall time against CI's budget, and the files that take most of it."""
    elapsed = time.monotonic() - _suite_start
    terminalreporter.write_sep("=", f"suite duration {elapsed:.0f} s (CI budget {SUITE_BUDGET_SECONDS} s)")
    for path, seconds in sorted(_durations.items(), key=lambda item: -item[1])[:8]:
        terminalreporter.write_line(f"{seconds:7.1f} s  {path}")
