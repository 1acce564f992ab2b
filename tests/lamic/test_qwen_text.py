"""Qwen-Image-Edit-2509's text groups on its real tokenizer and ComfyUI's own TextEncodeQwenImageEditPlus."""

from __future__ import annotations

import math

import pytest
import torch

from comfy.text_encoders.qwen_vl import process_qwen2vl_images
from comfy_extras.nodes_qwen import TextEncodeQwenImageEditPlus

from devkit.incontext_tiny import tiny_qwen_edit_clip
from devkit.pack import pack

qwen_text = pack("models.lamic.qwen_text")
qwen = pack("attention_patches.kinds.lamic.qwen")

VISION_START, VISION_END, IMAGE_PAD, IM_START = 151652, 151653, 151655, 151644
IMAGE_SIZES = [(96, 128), (128, 128)]  # (height, width) of image1, image2
PROMPT = "the cat on the left, the dog on the right"


@pytest.fixture(scope="module")
def clip():
    return tiny_qwen_edit_clip()


@pytest.fixture(scope="module")
def encoded(clip):
    images = [torch.rand(1, h, w, 3, generator=torch.Generator().manual_seed(i)) for i, (h, w) in enumerate(IMAGE_SIZES)]
    return TextEncodeQwenImageEditPlus.execute(clip, PROMPT, None, *images).result[0]


def reference_latent_size(height, width):
    """TextEncodeQwenImageEditPlus's reference size (1024x1024 area, multiples of 8), in latent cells."""
    scale = math.sqrt(1024 * 1024 / (width * height))
    return round(height * scale / 8.0), round(width * scale / 8.0)


def real_vision_tokens(height, width):
    """Merged vision tokens of an input image: the node's 384x384-area resize, then ComfyUI's Qwen2-VL preprocessing."""
    scale = math.sqrt(384 * 384 / (height * width))
    _, grid = process_qwen2vl_images(torch.zeros(1, round(height * scale), round(width * scale), 3))
    return int(grid[0, 1]) * int(grid[0, 2]) // (2 * 2)


def context_tokens(clip):
    """The ids of the context the encoder keeps, each picture's <|image_pad|> expanded to its vision tokens."""
    template = "<|im_start|>system\nx<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
    prompt = "".join(f"Picture {i}: <|vision_start|><|image_pad|><|vision_end|>" for i in range(1, len(IMAGE_SIZES) + 1))
    tokens = clip.tokenizer.qwen25_7b.tokenizer(prompt + PROMPT)["input_ids"]
    expanded = []
    sizes = iter(IMAGE_SIZES)
    for token in tokens:
        expanded += [IMAGE_PAD] * real_vision_tokens(*next(sizes)) if token == IMAGE_PAD else [token]
    tail = clip.tokenizer.qwen25_7b.tokenizer(template.split("{}")[1])["input_ids"]
    return expanded + tail


def test_spans_sit_on_the_pictures_and_the_prompt(clip, encoded):
    context = encoded[0][0]
    tokens = context_tokens(clip)
    assert context.shape[1] == len(tokens), "the encoder kept a different context than the template implies"
    counts = [qwen_text.vision_tokens_for_latent(*reference_latent_size(h, w)) for h, w in IMAGE_SIZES]
    spans = qwen_text.edit_spans(context.shape[1], counts)
    decode = clip.tokenizer.qwen25_7b.tokenizer.decode
    for number, (start, end) in enumerate(spans.pictures, start=1):
        piece = tokens[start:end]
        assert decode(piece[:qwen_text.PICTURE_PREFIX_TOKENS]) == f"Picture {number}: "
        assert piece[qwen_text.PICTURE_PREFIX_TOKENS] == VISION_START and piece[-1] == VISION_END
        assert set(piece[qwen_text.PICTURE_PREFIX_TOKENS + 1:-1]) == {IMAGE_PAD}
    cei = tokens[spans.cei[0]:spans.cei[1]]
    assert decode(cei[:-qwen_text.TEMPLATE_TAIL_TOKENS]) == PROMPT
    assert decode(cei[-qwen_text.TEMPLATE_TAIL_TOKENS:]) == "<|im_end|>\n<|im_start|>assistant\n"


def test_the_adapter_groups_a_call(encoded):
    """The adapter's call layout on the real context: SAD_i = picture i, CEI = the rest, no padding group."""
    context = encoded[0][0]
    refs = [torch.zeros(1, 16, 1, *reference_latent_size(h, w)) for h, w in IMAGE_SIZES]
    layout = qwen.QwenEditAdapter().token_layout(torch.zeros(1, 16, 1, 16, 16), context, refs)
    groups = [span.group for span in layout.text_groups.spans]
    assert groups == ["SAD_1", "SAD_2", "CEI"]
    assert layout.text_groups.length == context.shape[1]


@pytest.mark.parametrize("size", [(1024, 768), (720, 1280), (1000, 1500), (1080, 1920), (512, 512)])
def test_vision_count_from_the_reference_latent(size):
    """The usual photo sizes: the reference latent's size gives the exact vision token count."""
    assert qwen_text.vision_tokens_for_latent(*reference_latent_size(*size)) == real_vision_tokens(*size)


def test_a_text_without_the_pictures_is_named():
    with pytest.raises(qwen_text.QwenTextError, match="TextEncodeQwenImageEditPlus"):
        qwen_text.edit_spans(40, [196, 196])
