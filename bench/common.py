"""Shared benchmark helpers: the in-process ComfyUI runtime, interleaved timing, Markdown tables.

CPU timing on a shared machine is noisy, so every benchmark times its references and its
variants *interleaved*, round after round (the order rotates each round), and reports the
median of each variant's per-round ratio to the reference measured in the same round.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

BENCH_DIR = Path(__file__).resolve().parent
PACK_ROOT = BENCH_DIR.parent
RESULTS_MD = BENCH_DIR / "results.md"
SCHEDULE = torch.linspace(14.6, 0.0, 31)  # sigmas of a 30-step run; a call at SCHEDULE[i] belongs to step i


def row_boxes(count: int) -> list[tuple[float, float, float, float]]:
    """Side by side / n in a row (one subject: MS-Diffusion's centred default box)."""
    if count == 1:
        return [(0.25, 0.25, 0.75, 0.75)]
    return [(i / count, 0.25, (i + 1) / count, 0.75) for i in range(count)]


def setup_runtime() -> None:
    """ComfyUI in-process (on the GPU when CUDA is present, else the CPU; before comfy.model_management), and the pack."""
    from devkit.runtime import import_comfy

    import_comfy(cpu=not torch.cuda.is_available())
    import logging

    logging.getLogger().setLevel(logging.WARNING)
    from devkit.pack import load_pack

    load_pack()


def compute_device() -> torch.device:
    """The device ComfyUI runs models on here."""
    import comfy.model_management as mm

    return mm.get_torch_device()


def on_gpu() -> bool:
    return compute_device().type == "cuda"


def unet_dtypes(model_config, parameters: int) -> tuple[torch.dtype, torch.dtype | None]:
    """(storage dtype, manual cast dtype) ComfyUI loads a diffusion model of this config and size in on this device.

    What ``comfy.sd.load_diffusion_model`` decides: fp16 or bf16 on a GPU that has room and supports it, fp32 on a CPU.
    """
    import comfy.model_management as mm

    device = mm.get_torch_device()
    supported = model_config.supported_inference_dtypes
    dtype = mm.unet_dtype(model_params=parameters, supported_dtypes=supported)
    return dtype, mm.unet_manual_cast(dtype, device, supported)


def real_size_model(config_class, unet_config: dict, parameters: int):
    """ComfyUI's model of ``config_class`` at real size with seeded random weights, stored in the dtype ComfyUI would
    load it in here (``parameters``: its size, for that choice), loaded on ComfyUI's device."""
    import comfy.model_management as mm
    import comfy.model_patcher
    from devkit.tiny_models import fill_seeded

    dtype, manual_cast = unet_dtypes(config_class, parameters)
    config = config_class(dict(unet_config, dtype=dtype))
    config.set_inference_dtype(dtype, manual_cast)
    model = config.get_model({})
    fill_seeded(model.diffusion_model, seed=0)
    model.eval().requires_grad_(False)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())
    mm.load_models_gpu([patcher])
    return patcher


def dtype_name(patcher) -> str:
    return str(patcher.model_dtype()).replace("torch.", "")


def synchronize() -> None:
    """Wait for queued GPU work, so a timer measures it (nothing on a CPU)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def pack(name: str):
    from devkit.pack import pack as _pack

    return _pack(name)


def load_manifest() -> dict:
    """The official ms_adapter.bin's keys and shapes, from the tests' golden folder."""
    from devkit.runtime import golden_dir

    folder = golden_dir()
    if folder is None or not (folder / "ms_adapter_sdxl_manifest.json").exists():
        raise FileNotFoundError("ms_adapter_sdxl_manifest.json not found (MSP_GOLDEN_ROOT/msdiffusion, default ../shared/golden)")
    return json.loads((folder / "ms_adapter_sdxl_manifest.json").read_text())


@dataclass
class Timings:
    """Seconds per round for each variant, all measured in the same rounds."""

    rounds: list[dict[str, float]] = field(default_factory=list)

    def median(self, name: str) -> float:
        return statistics.median(r[name] for r in self.rounds)

    def ratio(self, name: str, reference: str) -> float:
        """Median over rounds of time(name) / time(reference) in the same round."""
        return statistics.median(r[name] / r[reference] for r in self.rounds)


def interleaved(variants: dict[str, Callable[[], object]], rounds: int, warmup: int = 1, inner: int = 1,
                progress: str | None = None) -> Timings:
    """Time every variant once per round, rotating the order each round.

    A variant's time in a round is the best of ``inner`` back-to-back calls: on a shared machine
    interference only ever adds time, so the fastest call is the least disturbed estimate.
    """
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    timings = Timings()
    for round_index in range(rounds):
        order = names[round_index % len(names):] + names[:round_index % len(names)]
        measured = {}
        for name in order:
            gc.collect()
            calls = []
            for _ in range(inner):
                synchronize()
                start = time.perf_counter()
                variants[name]()
                synchronize()
                calls.append(time.perf_counter() - start)
            measured[name] = min(calls)
        timings.rounds.append(measured)
        if progress:
            print(f"  {progress}: round {round_index + 1}/{rounds}", file=sys.stderr, flush=True)
    return timings


def markdown_table(headers: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def ratio(value: float) -> str:
    return f"{value:.3f}x"


def rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def machine_summary(threads: int | None = None) -> str:
    """The machine line of the results header (``threads``: what the sections were told to use)."""
    import platform

    cpu = f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__} ({threads or torch.get_num_threads()} threads)"
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda}), {cpu}; models in the dtype ComfyUI picks there"
    return f"{cpu}, fp32 on the CPU"


def manifest_shapes(manifest: dict, prefix: str = ""):
    """(dotted key, shape) of every tensor of the manifest, in file order."""
    for key, node in manifest.items():
        if isinstance(node, dict):
            yield from manifest_shapes(node, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", node


def write_real_size_checkpoint(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """A random-weight ms_adapter.bin with the real file's keys and shapes, and its .safetensors twin.

    Matrices ~ N(0, 1/fan_in), weights of keys containing "norm" 1, every other vector ~ N(0, 0.02) (also the
    feed-forward LayerNorms' weights, whose keys are numbered), so activations stay O(1).
    Written once per folder; reused when both files already exist.
    """
    import math

    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    bin_path, st_path = folder / "ms_adapter.bin", folder / "ms_adapter.safetensors"
    if bin_path.exists() and st_path.exists():
        return bin_path, st_path
    generator = torch.Generator().manual_seed(seed)
    nested: dict = {}
    for key, shape in manifest_shapes(load_manifest()):
        if len(shape) >= 2:
            tensor = torch.empty(shape).normal_(0.0, 1.0 / math.sqrt(math.prod(shape[1:])), generator=generator)
        elif key.endswith("weight") and "norm" in key:
            tensor = torch.ones(shape)
        else:
            tensor = torch.empty(shape).normal_(0.0, 0.02, generator=generator)
        top, _, rest = key.partition(".")
        if rest:
            nested.setdefault(top, {})[rest] = tensor
        else:
            nested[top] = tensor
    torch.save(nested, str(bin_path))
    save_file(pack("models.safe_load").flatten(nested), str(st_path))
    return bin_path, st_path


def bench_data_dir() -> Path:
    """Where the generated real-size random checkpoint lives between runs (git-ignored weights, outside the repo)."""
    import tempfile

    folder = Path(os.environ.get("MSP_BENCH_DATA", Path(tempfile.gettempdir()) / "msp_bench"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def emit(text: str, records, args) -> None:
    """Print a section's Markdown, and write it (and its records) where run_all.py asked (``--out``, ``--json``)."""
    print(text, flush=True)
    if args.out:
        Path(args.out).write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=1, default=str))


def section_args(doc: str, argv=None, **extra: dict):
    """Parse a section's command line: the options every section has, plus ``extra`` (name -> add_argument kwargs)."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter configuration")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default depends on --quick)")
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--json", help=argparse.SUPPRESS)
    for name, options in extra.items():
        parser.add_argument("--" + name, **options)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return args
