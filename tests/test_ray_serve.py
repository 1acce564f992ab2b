"""Scale-out on Ray Serve (scale_out/ray_serve_comfyui.py): two CPU replicas, each owning one ComfyUI worker.

The examples, converted to API prompts and shrunk onto the tiny stand-in models, are spread over the
replicas; one replica is killed while it runs a prompt, Serve replaces it and the prompt is sent again;
every image is byte-identical to the same prompt's image on a single server.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
import urllib.request

import pytest

from devkit import tiny_files
from devkit.runtime import COMFYUI_ROOT, PACK_ROOT
from scale_out import ray_serve_comfyui as scale_out
from scripts import demo
from scripts.make_reference_images import IMAGES
from scripts.workflow_api import load_workflow, workflow_to_prompt

EXAMPLES = ("two_subjects", "subject_and_scene", "ssr_two_subjects", "three_subjects")
LONG_STEPS = 6  # the first prompt runs longer, so the replica running it is killed mid-run
SHORT_STEPS = 2
SIZE = 128


def shared_folders(root) -> tuple[str, str]:
    """The models (tiny files under the examples' names) and input (the examples' drawings) every worker shares."""
    models, inputs = root / "models", root / "input"
    shutil.copytree(IMAGES, inputs)
    for name in EXAMPLES:
        files, _ = demo.workflow_files(load_workflow(PACK_ROOT / "example_workflows" / f"{name}.json"))
        tiny_files.write_tiny_files(models, [(f.folder, f.name) for f in files if tiny_files.needs_file(f.folder)])
    return str(models), str(inputs)


def api_prompts(object_info: dict) -> list[dict]:
    prompts = []
    for number, name in enumerate(EXAMPLES):
        prompt = demo.use_tiny_stand_ins(workflow_to_prompt(load_workflow(PACK_ROOT / "example_workflows" / f"{name}.json"),
                                                            object_info))
        demo.set_steps(prompt, LONG_STEPS if number == 0 else SHORT_STEPS)
        demo.set_size(prompt, SIZE, SIZE)
        prompts.append(prompt)
    return prompts


def running_long_prompt(url: str) -> bool:
    with urllib.request.urlopen(url + "/queue", timeout=5) as response:
        running = json.loads(response.read())["queue_running"]
    return any(node["class_type"] == "KSampler" and node["inputs"].get("steps") == LONG_STEPS
               for entry in running for node in entry[2].values())


class ReplicaKiller(threading.Thread):
    """Kills (SIGKILL) the replica process whose ComfyUI is running the long prompt, once."""

    def __init__(self, status_dir):
        super().__init__(daemon=True)
        self.status_dir, self.killed, self.stop = status_dir, None, threading.Event()

    def run(self):
        while not self.stop.is_set() and self.killed is None:
            for status in self.status_dir.glob("replica-*.json"):
                replica = json.loads(status.read_text())
                try:
                    if running_long_prompt(replica["url"]):
                        os.kill(replica["pid"], signal.SIGKILL)
                        self.killed = replica
                        return
                except OSError:
                    continue
            time.sleep(0.05)


def answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url + "/system_stats", timeout=2).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def workers(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale_out")
    models, inputs = shared_folders(root)
    status_dir = root / "status"
    status_dir.mkdir()
    return scale_out.Workers(models_dir=models, input_dir=inputs, comfyui=str(COMFYUI_ROOT), cpu=True, test_nodes=True,
                             status_dir=str(status_dir), env={"OMP_NUM_THREADS": "1"})


def test_prompts_spread_over_two_replicas_survive_a_killed_replica_byte_identical_to_one_server(workers):
    single = scale_out.ComfyUIWorker(scale_out.Workers(**{**workers.__dict__, "status_dir": None}))
    try:
        prompts = api_prompts(single.object_info())
        expected = [single.run(prompt) for prompt in prompts]
    finally:
        single.server.stop()
    for result in expected:
        assert result["status"]["status_str"] == "success" and result["images"], result["status"]

    status_dir = scale_out.Path(workers.status_dir)
    handle = scale_out.start(workers, replicas=2, health_check_period_s=1.0)
    try:
        killer = ReplicaKiller(status_dir)
        killer.start()
        results = scale_out.run_prompts(handle, prompts)
        killer.stop.set()
        assert killer.killed is not None, "no replica was seen running the long prompt"
        for number, (result, reference) in enumerate(zip(results, expected)):
            assert result["status"]["status_str"] == "success", result["status"]
            assert result["images"] == reference["images"], f"prompt {number}: images differ from the single server's"
        assert [r["attempts"] for r in results][0] == 2 and all(r["attempts"] == 1 for r in results[1:])
        # the killed prompt finished on a live replica; Serve may have given the killed one a short prompt before it
        assert results[0]["replica"] != killer.killed["pid"], results
        # Serve replaced the killed replica (a third one reported in), and the killed one's ComfyUI died with it
        deadline = time.monotonic() + 60
        while len(list(status_dir.glob("replica-*.json"))) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(list(status_dir.glob("replica-*.json"))) == 3
        while answers(killer.killed["url"]) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not answers(killer.killed["url"])
    finally:
        scale_out.stop()
