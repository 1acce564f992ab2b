"""`make bench`: every benchmark in one run, Markdown tables printed and written to bench/results.md.

Each section runs in its own process (the real-size SDXL UNet alone needs ~10 GB), one after
the other: the subject encoder (which also writes the real-size random checkpoint the UNet
section applies), single cross-attention calls, a tiny whole sampling run, a real-size UNet
step, an AnyStory FLUX block, and a real-size SD1.5 UNet step with SSR-Encoder and with
FastComposer, and LAMIC (mask memory, masked attention, in-box share). ``--quick`` shortens every section (smaller UNet latent, fewer rounds and shapes);
``--only ssr,fastcomposer`` runs just those sections.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BENCH_DIR, PACK_ROOT, RESULTS_MD, cpu_summary, markdown_table  # noqa: E402

SECTIONS = ("encoder", "attention", "sampling", "unet", "anystory", "ssr", "fastcomposer", "lamic")
TARGET_ATTENTION = 1.10  # patched call / lower bound
TARGET_UNET_BOX = 1.05  # up to 4 subjects
TARGET_UNET_AUTO = 1.10


def git_revision() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PACK_ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "attention_patches", "models"], cwd=PACK_ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + (" + uncommitted changes in attention_patches/models" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def load_average() -> str:
    try:
        return " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def run_section(name: str, args, folder: Path) -> tuple[str, object, float, str]:
    out, records = folder / f"{name}.md", folder / f"{name}.json"
    command = [sys.executable, str(BENCH_DIR / f"bench_{name}.py"), "--out", str(out), "--json", str(records)]
    if args.quick:
        command.append("--quick")
    if args.threads:
        command += ["--threads", str(args.threads)]
    print(f"== {name}: {' '.join(command[1:2] + command[6:])}", file=sys.stderr, flush=True)
    load_before = load_average()
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    return out.read_text(), json.loads(records.read_text()), seconds, f"{load_before} -> {load_average()}"


def verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def targets(results: dict) -> str:
    rows = []
    attention = results.get("attention")
    if attention:
        box = [r for r in attention if not r["auto"]]
        auto = [r for r in attention if r["auto"]]
        worst = max(box, key=lambda r: r["vs_lower_bound"])
        rows.append(["attention call, box routing: patched / lower bound", f"<= {TARGET_ATTENTION:.2f}x",
                     f"max {worst['vs_lower_bound']:.3f}x ({worst['grid']}, {worst['subjects']} subj., {worst['routing']})",
                     verdict(worst["vs_lower_bound"] <= TARGET_ATTENTION)])
        if auto:
            worst_auto = max(auto, key=lambda r: r["vs_lower_bound"])
            rows.append(["attention call, auto routing: patched / lower bound", f"<= {TARGET_ATTENTION:.2f}x",
                         f"max {worst_auto['vs_lower_bound']:.3f}x ({worst_auto['grid']}, {worst_auto['subjects']} subj.)",
                         verdict(worst_auto["vs_lower_bound"] <= TARGET_ATTENTION)])
    unet = results.get("unet")
    if unet:
        for kind, goal in (("box", TARGET_UNET_BOX), ("auto", TARGET_UNET_AUTO)):
            group = [r for r in unet if r["variant"].startswith(kind)]
            if not group:
                continue
            label = "box routing, <= 4 subjects" if kind == "box" else "auto routing"
            worst = max(group, key=lambda r: r["vs_unpatched"])
            rows.append([f"SDXL step, {label}: wall clock", f"<= {goal:.2f}x",
                         f"max {worst['vs_unpatched']:.3f}x ({worst['variant']})", verdict(worst["vs_unpatched"] <= goal)])
            worst = max(group, key=lambda r: r["added_share"])
            rows.append([f"SDXL step, {label}: time the patch adds (instrumented)", f"<= {(goal - 1) * 100:.0f}%",
                         f"max {worst['added_share'] * 100:.2f}% ({worst['variant']})", verdict(worst["added_share"] <= goal - 1)])
    lamic = results.get("lamic")
    if lamic:
        memory, attention = lamic["memory"], lamic["attention"]
        rows.append(["LAMIC mask structure, FLUX.2 4 refs at 1 MP", f"<= {memory['target_mib']} MiB",
                     f"{memory['worst_mib']:.2f} MiB", verdict(memory["worst_mib"] <= memory["target_mib"])])
        rows.append(["LAMIC masked / unmasked joint attention", f"<= {attention['target']:.1f}x", f"max {attention['worst']:.3f}x",
                     verdict(attention["worst"] <= attention["target"])])
    if not rows:
        return ""
    return "### Targets\n\n" + markdown_table(["target", "goal", "measured", ""], rows) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter configuration of every section (a few minutes)")
    parser.add_argument("--threads", type=int, help="torch threads in every section (default: torch's choice)")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--no-write", action="store_true", help="do not overwrite bench/results.md")
    args = parser.parse_args(argv)
    sections = [s for s in SECTIONS if not args.only or s in args.only.split(",")]

    started = time.perf_counter()
    texts, results, notes = {}, {}, []
    with tempfile.TemporaryDirectory(prefix="msp_bench_") as folder:
        for name in sections:
            text, records, seconds, load = run_section(name, args, Path(folder))
            texts[name], results[name] = text, records
            notes.append(f"{name} {seconds:.0f} s (load average {load})")
            print(text, flush=True)
    total = time.perf_counter() - started

    header = (
        "## Benchmarks\n\n"
        f"`make bench`{' (--quick)' if args.quick else ''}, {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}, "
        f"revision {git_revision()}. {cpu_summary(args.threads)}, ComfyUI 0.3.75 on CPU (its `optimized_attention` is "
        "sub-quadratic attention there). Every variant is timed interleaved with its references in the same run; the "
        "machine is shared, so absolute times are noisy and the ratios are what to read. Sections: "
        + "; ".join(notes) + f"; total {total / 60:.1f} min.\n"
    )
    order = ("attention", "unet", "sampling", "encoder", "anystory", "ssr", "fastcomposer", "lamic")
    body = "\n".join(texts[name] for name in order if name in texts)
    summary = targets(results)
    markdown = header + "\n" + summary + "\n" + body
    print(summary)
    if not args.no_write:
        RESULTS_MD.write_text(markdown)
        print(f"wrote {RESULTS_MD.relative_to(PACK_ROOT)} ({total / 60:.1f} min)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
