"""Split the official FastComposer ``pytorch_model.bin`` once into compact ``.safetensors`` files.

- ``fastcomposer_encoder.safetensors`` (models/fastcomposer, Load Subject Encoder): the
  fine-tuned image encoder and the fusion MLP in their stored dtypes (bf16, layers 22-23 and
  the MLP fp32; about 0.67 GB) plus a 64-value fingerprint of the fine-tuned UNet.
- ``fastcomposer_unet.safetensors`` (models/diffusion_models, Load Diffusion Model): the
  fine-tuned SD1.5 UNet under its diffusers names, fp16 by default (about 1.7 GB).

The text encoder (the frozen SD1.5 CLIP-L) and the VAE (unused by the official inference) are
not written: use the SD1.5 checkpoint's CLIP and VAE.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from .loader import (FINGERPRINT_KEY, FORMAT_TAG, IMAGE_ENCODER_PREFIX, POSTFUSE_PREFIX, UNET_PREFIX,
                     FastComposerFormatError, read_checkpoint, split_checkpoint, with_prefix)

log = logging.getLogger("comfyui_multisubject.convert")

ENCODER_FILE = "fastcomposer_encoder.safetensors"
UNET_FILE = "fastcomposer_unet.safetensors"


def encoder_tensors(flat: dict[str, torch.Tensor], name: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    weights = split_checkpoint(flat, None, name)  # validates before anything is written
    tensors = {f"{IMAGE_ENCODER_PREFIX}{k}": v.contiguous() for k, v in weights.image_encoder.items()}
    tensors.update({k: v.contiguous() for k, v in flat.items() if k.startswith(POSTFUSE_PREFIX)})
    if weights.unet_fingerprint is not None:
        tensors[FINGERPRINT_KEY] = weights.unet_fingerprint
    metadata = {"format": FORMAT_TAG, "vision_heads": str(weights.vision["num_attention_heads"])}
    return tensors, metadata


def unet_tensors(flat: dict[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    unet = with_prefix(flat, UNET_PREFIX)
    return {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous() for k, v in unet.items()}


def convert(source: str | Path, target_dir: str | Path | None = None, unet_dtype: torch.dtype | None = torch.float16) -> dict[str, Path]:
    """Write the encoder (and, if the source has one, the UNet) next to ``source`` or into ``target_dir``."""
    source = Path(source)
    target_dir = Path(target_dir) if target_dir is not None else source.parent
    flat, _metadata = read_checkpoint(source)
    tensors, metadata = encoder_tensors(flat, source.name)
    target_dir.mkdir(parents=True, exist_ok=True)
    written = {"encoder": target_dir / ENCODER_FILE}
    save_file(tensors, str(written["encoder"]), metadata=metadata)
    log.info("wrote %s (%d tensors): put it in models/fastcomposer", written["encoder"], len(tensors))
    unet = unet_tensors(flat, unet_dtype)
    if unet:
        written["unet"] = target_dir / UNET_FILE
        save_file(unet, str(written["unet"]), metadata={"format": f"{FORMAT_TAG}_unet"})
        log.info("wrote %s (%d tensors): put it in models/diffusion_models, load it with Load Diffusion Model",
                 written["unet"], len(unet))
    else:
        log.warning("%s has no 'unet.*' tensors: no UNet written", source.name)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="the official pytorch_model.bin (Hugging Face mit-han-lab/fastcomposer)")
    parser.add_argument("target_dir", nargs="?", help="output folder (default: the source's folder)")
    parser.add_argument("--unet-fp32", action="store_true", help="keep the UNet in float32 (3.4 GB instead of 1.7 GB)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        convert(args.source, args.target_dir, None if args.unet_fp32 else torch.float16)
    except FastComposerFormatError as e:
        log.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
