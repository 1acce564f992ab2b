"""Convert an official ``ms_adapter.bin`` into a ``.safetensors`` file (optionally fp16).

The output keeps the official key names with flat prefixes (``image_proj.``, ``ms_adapter.``,
``dummy_image_tokens``), so it loads faster, cannot carry code, and round-trips exactly.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from .loader import FORMAT_TAG, build_encoder, read_checkpoint

log = logging.getLogger("comfyui_multisubject.convert")


def convert(source: str | Path, target: str | Path, fp16: bool = False) -> Path:
    source, target = Path(source), Path(target)
    flat, metadata = read_checkpoint(source)
    encoder = build_encoder(flat, metadata, source.name)  # validates before anything is written
    dtype = torch.float16 if fp16 else None
    tensors = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous() for k, v in flat.items()}
    metadata = {
        **metadata,
        "format": FORMAT_TAG,
        "resampler_dim_head": str(encoder.config.dim_head),
        "fourier_freqs": str(encoder.config.fourier_freqs),
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(target), metadata=metadata)
    log.info("wrote %s (%d tensors%s)", target, len(tensors), ", fp16" if fp16 else "")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="ms_adapter.bin (or any readable MS-Diffusion checkpoint)")
    parser.add_argument("target", nargs="?", help="output .safetensors (default: next to the source)")
    parser.add_argument("--fp16", action="store_true", help="store floating-point tensors as float16 (half the size)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    target = args.target or str(Path(args.source).with_suffix(".fp16.safetensors" if args.fp16 else ".safetensors"))
    convert(args.source, target, args.fp16)
    return 0


if __name__ == "__main__":
    sys.exit(main())
