"""The dtype a kind computes a reference's encoding in, whatever dtype its files or partner models are stored in.

Released weights come in fp32, fp16, bf16 or fp8 and a partner model (Redux, CLIP-Vision) may be
stored in another dtype than the kind's file: every matmul of an encoding casts its weights to
this one dtype. It is ComfyUI's choice for encoders on the device (``text_encoder_dtype``), but
float32 on a CPU, where half precision is slow and loses the goldens' precision.
"""

from __future__ import annotations

import torch

import comfy.model_management as mm


def encoding_dtype(device: torch.device) -> torch.dtype:
    if mm.is_device_cpu(device):
        return torch.float32
    dtype = mm.text_encoder_dtype(device)
    return dtype if dtype in (torch.float16, torch.bfloat16) else torch.float32  # fp8 stores weights; it does not compute
