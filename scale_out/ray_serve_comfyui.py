"""Scale-out on Ray Serve: each replica owns one ComfyUI worker with this pack; API prompts are spread over them.

A replica starts the embedded ComfyUI (``.runtime/ComfyUI``, or any ComfyUI folder with the pack in
its custom_nodes) as a subprocess on a free 127.0.0.1 port, in a base directory of its own (its
output, temp and user folders) that links the shared model and input folders, and runs one API
prompt at a time (``max_ongoing_requests=1``), returning the images the prompt made as PNG bytes.
Ray Serve's controller replaces a replica whose process dies (its health check also fails when its
ComfyUI has exited); ``run_prompts`` retries a prompt whose replica died under it, so nothing is
lost. The same prompt gives byte-identical PNGs on any replica and on a single server (seeds and
model files are in the prompt and the shared folders; the pack keeps no state between prompts).

Used as a library (see README, *Scale-out on Ray Serve*):

    handle = start(Workers(models_dir=".../ComfyUI/models", input_dir=".../ComfyUI/input"), replicas=2)
    results = run_prompts(handle, [prompt_1, prompt_2, ...])   # API prompts (scripts/workflow_api.py)
    stop()

or from the command line, for UI workflows or API prompts in JSON files:

    .venv/bin/python scale_out/ray_serve_comfyui.py --replicas 2 --models .runtime/ComfyUI/models \\
        --input .runtime/ComfyUI/input --out output/scale_out example_workflows/two_subjects.json ...
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from embedded_comfyui import COMFYUI, EmbeddedComfyUI, prepare_base  # noqa: E402

DEPLOYMENT = "ComfyUIWorker"
APP_NAME = "comfyui"
OBJECT_STORE_BYTES = 256 * 1024 * 1024  # prompts and PNGs are small; Ray's default takes 30 % of the RAM
RETRIES = 3  # attempts per prompt beyond the first, when its replica dies under it
PR_SET_PDEATHSIG = 1

log = logging.getLogger("ray_serve_comfyui")


@dataclass(frozen=True)
class Workers:
    """What every replica's ComfyUI gets: the shared model and input folders, the ComfyUI to run, its options.

    ``test_nodes``: also link the pack's test-only tiny loaders (tests/custom_nodes), as the tests do.
    ``status_dir``: each replica writes ``replica-<pid>.json`` there ({"pid", "url"}), for monitoring.
    """

    models_dir: str | None = None
    input_dir: str | None = None
    comfyui: str = str(COMFYUI)
    cpu: bool | None = None
    test_nodes: bool = False
    status_dir: str | None = None
    env: dict = field(default_factory=dict)


def _die_with_parent() -> None:
    """In the ComfyUI child: the kernel kills it when the replica process that started it dies (Linux)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:  # not Linux: a killed replica leaves its ComfyUI to be stopped by hand
        pass


def _link(link: Path, target: str | None) -> None:
    if target is not None:
        link.symlink_to(Path(target).resolve(), target_is_directory=True)


class ComfyUIWorker:
    """One Ray Serve replica: one ComfyUI subprocess, one prompt at a time."""

    def __init__(self, workers: Workers, start_timeout: float = 300.0):
        self.scratch = Path(tempfile.mkdtemp(prefix="comfyui-replica-"))
        base = self.scratch / "base"
        base.mkdir()
        _link(base / "models", workers.models_dir)
        _link(base / "input", workers.input_dir)
        self.server = EmbeddedComfyUI(self.scratch / "server.log", base=prepare_base(base, workers.test_nodes),
                                      comfyui=Path(workers.comfyui), cpu=workers.cpu, env=workers.env,
                                      preexec_fn=_die_with_parent)
        # The child dies with the thread that started it (PR_SET_PDEATHSIG), so a thread that lives as long as the replica
        # starts it and then waits on it.
        started, failure = threading.Event(), []

        def own_server():
            try:
                self.server.start(timeout=start_timeout)
            except Exception as error:  # reported to the constructor, which fails and Serve retries
                failure.append(error)
            finally:
                started.set()
            if self.server.process is not None:
                self.server.process.wait()

        threading.Thread(target=own_server, name="comfyui-server", daemon=True).start()
        started.wait()
        if failure:
            raise failure[0]
        if workers.status_dir:
            status = Path(workers.status_dir) / f"replica-{os.getpid()}.json"
            status.write_text(json.dumps({"pid": os.getpid(), "url": self.server.url}))
        log.info("replica %d: ComfyUI at %s", os.getpid(), self.server.url)

    def run(self, prompt: dict, timeout: float = 3600.0) -> dict:
        """Run one API prompt; ``{"status": history status, "images": {node id: [PNG bytes, ...]}, "replica": pid}``."""
        history = self.server.run(prompt, timeout)
        images = {}
        for node_id, output in sorted(history.get("outputs", {}).items()):
            for image in output.get("images", []):
                query = urllib.parse.urlencode({k: image.get(k, "") for k in ("filename", "subfolder", "type")})
                images.setdefault(node_id, []).append(self.server.read(f"/view?{query}"))
        return {"status": history.get("status", {}), "images": images, "replica": os.getpid()}

    def object_info(self) -> dict:
        """The node definitions of the replica's ComfyUI (to convert UI workflows with scripts/workflow_api.py)."""
        return self.server.get("/object_info")

    def check_health(self) -> None:
        """Serve's health check: a replica whose ComfyUI exited is replaced."""
        if self.server.process is None or self.server.process.poll() is not None:
            raise RuntimeError(f"the replica's ComfyUI exited:\n{self.server.log_tail()}")

    def __del__(self):
        self.server.stop()


def _init_ray(num_cpus: int) -> None:
    """A local Ray for a small box: explicit CPUs, no dashboard, 127.0.0.1 only, no usage stats, a small object store."""
    import ray

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    paths = [str(Path(__file__).resolve().parent), str(ROOT / "scripts"), os.environ.get("PYTHONPATH", "")]
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)  # the workers import this module by name
    if not ray.is_initialized():
        ray.init(num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
                 object_store_memory=OBJECT_STORE_BYTES, log_to_driver=False, configure_logging=False)


def start(workers: Workers, replicas: int = 2, gpus_per_replica: float = 0.0, health_check_period_s: float = 2.0):
    """Start Ray (when not connected yet) and the deployment; the handle prompts are sent through."""
    from ray import serve

    _init_ray(num_cpus=replicas)
    serve.start(proxy_location="Disabled", logging_config={"enable_access_log": False})
    deployment = serve.deployment(ComfyUIWorker, name=DEPLOYMENT, num_replicas=replicas, max_ongoing_requests=1,
                                  ray_actor_options={"num_cpus": 1, "num_gpus": gpus_per_replica}, health_check_period_s=health_check_period_s,
                                  health_check_timeout_s=30, graceful_shutdown_timeout_s=20)
    return serve.run(deployment.bind(workers), name=APP_NAME, route_prefix=None)


def stop() -> None:
    import ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()


def _retryable() -> tuple[type[BaseException], ...]:
    """The errors of a replica that died or vanished under a request (not a prompt's own failure)."""
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
    from ray.serve.exceptions import DeploymentUnavailableError, ReplicaUnavailableError, RequestCancelledError

    return (ActorDiedError, ActorUnavailableError, RayActorError, DeploymentUnavailableError, ReplicaUnavailableError,
            RequestCancelledError)


def run_prompts(handle, prompts: list[dict], retries: int = RETRIES, timeout: float = 3600.0) -> list[dict]:
    """Send every prompt at once (Serve spreads them over the replicas); a prompt whose replica died is sent again.

    Results come back in the order of ``prompts``, each with ``attempts`` (1 when its first replica finished it).
    """
    retryable = _retryable()
    pending = {index: (handle.run.remote(prompt, timeout), 1) for index, prompt in enumerate(prompts)}
    results: dict[int, dict] = {}
    while pending:
        index, (response, attempt) = next(iter(pending.items()))
        try:
            results[index] = {**response.result(timeout_s=timeout), "attempts": attempt}
            del pending[index]
        except retryable as error:
            if attempt > retries:
                raise
            log.warning("prompt %d: its replica died (%s); sending it again (attempt %d)", index, type(error).__name__, attempt + 1)
            pending[index] = (handle.run.remote(prompts[index], timeout), attempt + 1)
    return [results[index] for index in range(len(prompts))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="UI workflows or API prompts (JSON)")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--models", help="the models folder every replica uses (default: the ComfyUI's own)")
    parser.add_argument("--input", help="the input folder every replica uses (default: the ComfyUI's own)")
    parser.add_argument("--comfyui", default=str(COMFYUI), help="the ComfyUI folder to run (default: the embedded one)")
    parser.add_argument("--out", type=Path, default=ROOT / "output" / "scale_out", help="where the images go")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[scale-out] %(message)s")
    from workflow_api import workflow_to_prompt

    comfyui = Path(args.comfyui)
    workers = Workers(models_dir=args.models or str(comfyui / "models"), input_dir=args.input or str(comfyui / "input"),
                      comfyui=str(comfyui))
    documents = [json.loads(path.read_text()) for path in args.files]
    handle = start(workers, args.replicas)
    try:
        object_info = None
        prompts = []
        for document in documents:
            if "nodes" in document:  # a UI workflow: converted against a replica's node definitions
                if object_info is None:
                    object_info = handle.object_info.remote().result()
                document = workflow_to_prompt(document, object_info)
            prompts.append(document)
        started = time.time()
        results = run_prompts(handle, prompts)
    finally:
        stop()
    args.out.mkdir(parents=True, exist_ok=True)
    for path, result in zip(args.files, results):
        for node_id, images in result["images"].items():
            for number, png in enumerate(images, start=1):
                (args.out / f"{path.stem}_node{node_id}_{number}.png").write_bytes(png)
        log.info("%s: %s on replica %d (%d attempt(s))", path.name, result["status"].get("status_str"), result["replica"],
                 result["attempts"])
    log.info("%d prompt(s) in %.1f s on %d replica(s); images in %s", len(prompts), time.time() - started, args.replicas, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
