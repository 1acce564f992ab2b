"""Several ComfyUI workers fed the same API prompts (README: "Running behind several workers").

Two servers started independently (own process, port, base directory; the same model files) must
turn the same API prompt into byte-identical files, whatever either of them ran before: the pack
keeps no server-global state that changes a result.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from devkit.server import ComfyServer
from graphs import two_subject_graph

SHARED = dict(auto_routing=True, preview=True, steps=3)  # auto routing + route capture: the most run state


def start_worker(base, tiny) -> ComfyServer:
    """One worker: its own base directory holding the same (seeded, so identical) model files and references."""
    server = ComfyServer(base)
    tiny.save_subject_encoder(base / "models" / "msdiffusion" / "ms_adapter.bin")
    for i, name in enumerate(("dog.png", "cat.png")):
        pixels = np.random.default_rng(i).integers(0, 255, (96, 80, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(base / "input" / name)
    return server.start()


def output_files(server: ComfyServer, history: dict) -> dict[str, str]:
    """node id -> sha256 of every file the prompt wrote (saved image, route preview)."""
    assert history["status"]["status_str"] == "success", json.dumps(history["status"])[:3000]
    digests = {}
    for node_id, output in history["outputs"].items():
        for n, image in enumerate(output.get("images", [])):
            path = server.base / image["type"] / image["subfolder"] / image["filename"]
            digests[f"{node_id}/{n}"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


@pytest.fixture(scope="module")
def workers(tiny, tmp_path_factory):
    first = start_worker(tmp_path_factory.mktemp("worker-a"), tiny)
    try:
        second = start_worker(tmp_path_factory.mktemp("worker-b"), tiny)
    except Exception:
        first.stop()
        raise
    yield first, second
    first.stop()
    second.stop()


def test_the_same_prompt_gives_byte_identical_files_on_two_independent_servers(workers):
    first, second = workers
    assert first.port != second.port and first.base != second.base
    # the first worker has been busy with other prompts (other subjects, seed, routing); the second is fresh
    busy = two_subject_graph(phrases=("cat", "dog"), prompt="a cat and a dog on a lawn", steps=2).prompt()
    next(n for n in busy.values() if n["class_type"] == "KSampler")["inputs"]["seed"] = 7
    for prompt in (busy, two_subject_graph(auto_routing=True, steps=2).prompt()):
        output_files(first, first.run(prompt))

    shared = two_subject_graph(**SHARED).prompt()
    on_first, on_second = output_files(first, first.run(shared)), output_files(second, second.run(shared))
    assert len(on_first) == 2  # the saved image and the route preview
    assert on_first == on_second
