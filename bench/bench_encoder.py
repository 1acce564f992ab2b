"""Subject encoder: load time (.bin vs .safetensors), resampler time per subject, resident memory.

Uses a random-weight checkpoint with every key and shape of the official ``ms_adapter.bin``
(459.7 M parameters, 1.84 GB in fp32), loaded through the pack's
``attention_patches.kinds.registry.load_subject_encoder`` (what Load Subject Encoder runs).
Resident memory is measured in a fresh process per format (psutil RSS before and after
loading, after first use, and the peak).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

from bench.common import (
    PACK_ROOT, bench_data_dir, emit, interleaved, markdown_table, pack, row_boxes, rss_bytes, section_args,
    setup_runtime, write_real_size_checkpoint,
)

GB = 1e9


def peak_rss_bytes() -> int:
    """Peak RSS of this process: VmHWM (getrusage's ru_maxrss can carry the parent's peak across exec)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure_rss(path: str) -> dict:
    """In this (fresh) process: RSS before/after loading ``path``, peak RSS, parameter bytes."""
    setup_runtime()
    subject_encoder = pack("attention_patches.kinds.registry")
    import gc

    gc.collect()
    before = rss_bytes()
    start = time.perf_counter()
    encoder = subject_encoder.load_subject_encoder(path)
    seconds = time.perf_counter() - start
    gc.collect()
    after = rss_bytes()
    peak = peak_rss_bytes()
    params = sum(p.numel() * p.element_size() for p in encoder.module.parameters())
    with torch.inference_mode():
        for parameter in encoder.module.parameters():  # first use: a memory-mapped file's pages come in now
            parameter.sum()
    used = rss_bytes()
    return {"rss_before": before, "rss_after": after, "rss_used": used, "peak": max(peak, peak_rss_bytes()),
            "param_bytes": params, "seconds": seconds,
            "dtype": str(next(encoder.module.parameters()).dtype)}


def rss_in_fresh_process(path) -> dict:
    out = subprocess.run([sys.executable, "-m", "bench.bench_encoder", "--rss", str(path)], check=True,
                         capture_output=True, text=True, cwd=PACK_ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(quick: bool = False, rounds: int | None = None) -> tuple[str, dict]:
    setup_runtime()
    subject_encoder = pack("attention_patches.kinds.registry")
    rounds = rounds or (2 if quick else 3)
    start = time.perf_counter()
    bin_path, st_path = write_real_size_checkpoint(bench_data_dir() / "real_size")
    write_seconds = time.perf_counter() - start

    loads = {".bin": lambda: subject_encoder.load_subject_encoder(bin_path),
             ".safetensors": lambda: subject_encoder.load_subject_encoder(st_path)}
    load_timings = interleaved(loads, rounds=rounds, warmup=1, progress="encoder load")
    memory = {name: rss_in_fresh_process(path) for name, path in ((".bin", bin_path), (".safetensors", st_path))}

    encoder = subject_encoder.load_subject_encoder(st_path)
    generator = torch.Generator().manual_seed(0)
    config = encoder.module.config

    def subjects(count):
        features = [torch.randn(1, 257, config.embedding_dim, generator=generator) for _ in range(count)]
        phrases = torch.randn(count, config.phrase_dim, generator=generator)
        boxes = torch.tensor(row_boxes(count))
        return features, phrases, boxes

    inputs = {count: subjects(count) for count in (1, 4)}
    tokens = {count: encoder.encode_subjects(*inputs[count]) for count in (1, 4)}
    scales = {count: torch.full((count,), 0.6) for count in (1, 4)}
    work = {
        "resample 1 subject": lambda: encoder.encode_subjects(*inputs[1]),
        "resample 4 subjects": lambda: encoder.encode_subjects(*inputs[4]),
        "project 1 subject (70 layers)": lambda: encoder.project(tokens[1], scales[1], torch.float32, torch.device("cpu")),
        "project 4 subjects (70 layers)": lambda: encoder.project(tokens[4], scales[4], torch.float32, torch.device("cpu")),
    }
    with torch.inference_mode():
        work_timings = interleaved(work, rounds=rounds + 2, warmup=1, progress="resampler")
        bank = encoder.project(tokens[1], scales[1], torch.float32, torch.device("cpu"))
    bank_bytes = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in bank.values())

    size = {name: os.path.getsize(path) / GB for name, path in ((".bin", bin_path), (".safetensors", st_path))}
    load_rows = []
    for name in loads:
        m = memory[name]
        load_rows.append([
            name, f"{size[name]:.2f}", f"{load_timings.median(name):.2f}",
            f"{load_timings.ratio(name, '.bin'):.2f}x", f"{m['seconds']:.2f}",
            f"{(m['rss_after'] - m['rss_before']) / GB:.2f}", f"{(m['rss_used'] - m['rss_before']) / GB:.2f}",
            f"{(m['peak'] - m['rss_before']) / GB:.2f}",
            f"{m['param_bytes'] / GB:.2f} ({m['dtype'].replace('torch.', '')})",
        ])
    load_table = markdown_table(
        ["file", "size GB", "load s (warm cache)", "vs .bin", "load s (fresh process)", "RSS delta GB", "RSS delta after first use GB",
         "peak RSS delta GB",
         "parameter GB"], load_rows)
    work_rows = [
        ["resampler, 1 subject", f"{work_timings.median('resample 1 subject') * 1000:.0f}",
         f"{work_timings.median('resample 1 subject') * 1000:.0f}"],
        ["resampler, 4 subjects", f"{work_timings.median('resample 4 subjects') * 1000:.0f}",
         f"{work_timings.median('resample 4 subjects') * 1000 / 4:.0f}"],
        ["key/value projection for 70 layers, 1 subject", f"{work_timings.median('project 1 subject (70 layers)') * 1000:.0f}",
         f"{work_timings.median('project 1 subject (70 layers)') * 1000:.0f}"],
        ["key/value projection for 70 layers, 4 subjects", f"{work_timings.median('project 4 subjects (70 layers)') * 1000:.0f}",
         f"{work_timings.median('project 4 subjects (70 layers)') * 1000 / 4:.0f}"],
    ]
    work_table = markdown_table(["once per Apply", "ms", "ms per subject"], work_rows)
    text = (
        "### Subject encoder (real size: 459.7 M parameters, random weights)\n\n"
        f"Load through `load_subject_encoder`: median of {rounds} interleaved loads with the file in the page cache, and "
        "one load in a fresh process, which also gives the resident memory (psutil RSS after minus before loading, and "
        "after first reading every weight; peak = max RSS minus RSS before). A `.safetensors` file is memory-mapped: "
        "loading returns at once and its pages come in (shared with the page cache) when the weights are first used; "
        "a `.bin` is unpickled into private memory. "
        + (f"The benchmark wrote both files in {write_seconds:.0f} s. " if write_seconds > 1 else "")
        + "GB = 10^9 bytes.\n\n" + load_table + "\n\n"
        "The resampler and the projections run once per Apply (never per step); one view per subject. The projected "
        f"keys/values every step reads take {bank_bytes / 1e6:.1f} MB per subject (fp32).\n\n" + work_table + "\n"
    )
    return text, {"memory": memory, "size_gb": size}


def main(argv=None) -> int:
    args = section_args(__doc__, argv, rss={"help": argparse.SUPPRESS})
    if args.rss:
        print(json.dumps(measure_rss(args.rss)))
        return 0
    emit(*run(args.quick, args.rounds), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
