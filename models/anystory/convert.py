"""Convert ``anystory_flux.bin`` into a ``.safetensors`` file (optionally fp16/bf16).

The output keeps the file's nested keys flattened with dots (``ref.transformer...``,
``redux.*``, ``router.*``), which is exactly what the loader reads from either format; it is
validated before anything is written and cannot carry code.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..safe_load import read_tensors
from .checkpoint import AnyStoryFormatError, build_weights

log = logging.getLogger("comfyui_multisubject.convert")
DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def convert(source: str | Path, target: str | Path, dtype: str = "fp32") -> Path:
    source, target = Path(source), Path(target)
    flat, _ = read_tensors(source, AnyStoryFormatError)
    build_weights(flat, source.name)  # validates before anything is written
    cast = DTYPES[dtype]
    tensors = {k: (v.to(cast) if cast is not None and v.is_floating_point() else v).contiguous() for k, v in flat.items()}
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(target), metadata={"format": "anystory_flux"})
    log.info("wrote %s (%d tensors, %s)", target, len(tensors), dtype)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="anystory_flux.bin")
    parser.add_argument("target", nargs="?", help="output .safetensors (default: next to the source)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="storage type of floating-point tensors")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    convert(args.source, args.target or str(Path(args.source).with_suffix(".safetensors")), args.dtype)
    return 0


if __name__ == "__main__":
    sys.exit(main())
