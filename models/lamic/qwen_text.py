"""Where LAMIC's text groups sit in a Qwen-Image-Edit-2509 context (TextEncodeQwenImageEditPlus).

ComfyUI encodes ``"Picture k: <|vision_start|><|image_pad|><|vision_end|>"`` for each reference
image, then the prompt, inside a chat template, and keeps the hidden states from the user turn on
(the system prompt and ``<|im_start|>user\\n`` are stripped). Each ``<|image_pad|>`` becomes the
image's merged vision tokens. So the context is::

    [Picture 1: <vs> V_1 <ve> | ... | Picture n: <vs> V_n <ve> | prompt | <|im_end|>\\n<|im_start|>assistant\\n]

Picture k's piece is reference k's own text (LAMIC's SAD_k: the image described in tokens); the
prompt and the template tail form the CEI. There is no padding group. The vision token count of
an image follows from the size TextEncodeQwenImageEditPlus gave it (384x384 area), which the
reference latent's size (1024x1024 area) determines up to rounding: :func:`vision_tokens_for_latent`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

PICTURE_PREFIX_TOKENS = 5  # "Picture", " ", "k", ":", " " (k = 1..9: Qwen2 splits digits)
VISION_BRACKET_TOKENS = 2  # <|vision_start|>, <|vision_end|>
TEMPLATE_TAIL_TOKENS = 5  # <|im_end|>, "\n", <|im_start|>, "assistant", "\n"
MAX_PICTURES = 9  # one digit in "Picture k"

VL_AREA = 384 * 384  # TextEncodeQwenImageEditPlus: the image the vision tower sees
REFERENCE_AREA = 1024 * 1024  # ... and the image it VAE-encodes into the reference latent
VAE_FACTOR = 8
VISION_PATCH, VISION_MERGE = 14, 2
VISION_MIN_PIXELS, VISION_MAX_PIXELS = 3136, 12845056  # comfy.text_encoders.qwen_vl.process_qwen2vl_images


class QwenTextError(ValueError):
    """The context cannot be the TextEncodeQwenImageEditPlus encoding of these references."""


@dataclass(frozen=True)
class QwenEditSpans:
    """[start, end) in the context: picture k's piece (prefix, brackets, vision tokens), and the CEI (prompt + tail)."""

    pictures: tuple[tuple[int, int], ...]
    cei: tuple[int, int]


def vision_grid(height: int, width: int) -> tuple[int, int]:
    """Merged vision tokens (rows, columns) of an image of ``height`` x ``width`` px, as Qwen2.5-VL's preprocessing sizes it."""
    factor = VISION_PATCH * VISION_MERGE
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    if h_bar * w_bar > VISION_MAX_PIXELS:
        beta = math.sqrt(height * width / VISION_MAX_PIXELS)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < VISION_MIN_PIXELS:
        beta = math.sqrt(VISION_MIN_PIXELS / (height * width))
        h_bar, w_bar = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h_bar // factor, w_bar // factor


def vision_tokens_for_image(height: int, width: int) -> int:
    """Vision tokens TextEncodeQwenImageEditPlus puts in the text for an input image of that size."""
    scale = math.sqrt(VL_AREA / (height * width))
    rows, cols = vision_grid(round(height * scale), round(width * scale))
    return rows * cols


def vision_tokens_for_latent(latent_height: int, latent_width: int) -> int:
    """The same count from a reference latent's size (the source image taken as the latent's pixel size).

    Exact when the source's aspect ratio survives the 8-px rounding of the 1 MP resize (square and the
    usual photo ratios do); otherwise a picture's span can be off by one row of vision tokens, which
    the neighbouring piece absorbs (like LAMIC's own span drift).
    """
    return vision_tokens_for_image(latent_height * VAE_FACTOR, latent_width * VAE_FACTOR)


def edit_spans(text_tokens: int, vision_tokens: list[int] | tuple[int, ...]) -> QwenEditSpans:
    """The pieces of a context of ``text_tokens`` holding len(vision_tokens) pictures in order."""
    if len(vision_tokens) > MAX_PICTURES:
        raise QwenTextError(f"{len(vision_tokens)} pictures; TextEncodeQwenImageEditPlus numbers at most {MAX_PICTURES}")
    pictures, start = [], 0
    for count in vision_tokens:
        end = start + PICTURE_PREFIX_TOKENS + VISION_BRACKET_TOKENS + count
        pictures.append((start, end))
        start = end
    if start + TEMPLATE_TAIL_TOKENS > text_tokens:
        raise QwenTextError(
            f"the text has {text_tokens} tokens, fewer than the {start + TEMPLATE_TAIL_TOKENS} that {len(vision_tokens)} "
            "picture(s) and the chat template take: encode the prompt with TextEncodeQwenImageEditPlus, its image1.. "
            "inputs holding the references in box order")
    return QwenEditSpans(tuple(pictures), (start, text_tokens))
