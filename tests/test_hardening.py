"""Wrong or unusual inputs (the README's table): each gives a clear result, nothing is lost, the server survives."""

import json
import logging

import psutil
import pytest
import torch

import comfy.model_management

from devkit.server import PromptRefused
from graphs import two_subject_graph
from devkit.helpers import apply, encode_subjects, encode_text, layout, sample
from devkit.pack import pack

injection = pack("attention_patches.injection")
patch_mod = pack("attention_patches.patch")

BOXES = [(0.0, 0.25, 0.4, 0.75), (0.6, 0.25, 1.0, 0.75)]
LATENT = (16, 24)
PROMPT = "a dog and a cat"


@pytest.fixture(scope="module")
def subjects(tiny_vision, tiny_clip):
    return encode_subjects(tiny_vision, tiny_clip, ["dog", "cat"])


def test_missing_model_file_is_a_node_error_naming_the_input(comfy_server):
    with pytest.raises(PromptRefused) as error:
        comfy_server.run(two_subject_graph(encoder="not_downloaded.bin").prompt())
    assert error.value.status == 400
    node_error = next(e for e in error.value.body["node_errors"].values() if e["class_type"] == "MSP_LoadSubjectEncoder")
    assert "encoder_name" in json.dumps(node_error) and "not_downloaded.bin" in json.dumps(node_error)


def test_wrong_clip_vision_on_the_server_names_clip_vision_g(comfy_server):
    graph = two_subject_graph(preview=False)
    vision = next(i for i, n in graph.nodes.items() if n["class_type"] == "MSPTest_TinyCLIPVisionLoader")
    graph.nodes[vision]["inputs"]["variant"] = "ViT-H"
    history = comfy_server.run(graph.prompt())
    error = next(m for kind, m in history["status"]["messages"] if kind == "execution_error")
    assert error["node_type"] == "MSP_ApplyMultiSubjectAttention"
    assert "clip_vision_g.safetensors" in error["exception_message"]


def test_non_sdxl_model_on_the_server_is_refused(comfy_server):
    graph = two_subject_graph(preview=False)
    apply_id = next(i for i, n in graph.nodes.items() if n["class_type"] == "MSP_ApplyMultiSubjectAttention")
    sd15 = graph.add("MSPTest_TinySD15Loader")
    graph.nodes[apply_id]["inputs"]["model"] = [sd15, 0]
    history = comfy_server.run(graph.prompt())
    error = next(m for kind, m in history["status"]["messages"] if kind == "execution_error")
    assert "load an SDXL checkpoint" in error["exception_message"]


def test_a_latent_batch_of_four_routes_every_image(tiny_unet, tiny_encoder, subjects, tiny_clip):
    model, _ = apply(tiny_unet, tiny_encoder, subjects, layout(BOXES))
    latent = torch.zeros(4, 4, *LATENT)
    patched = sample(model, tiny_clip, LATENT, steps=2, latent=latent)
    plain = sample(tiny_unet, tiny_clip, LATENT, steps=2, latent=latent)
    assert patched.shape == (4, 4, *LATENT)
    assert all(not torch.allclose(patched[i], plain[i]) for i in range(4))
    single = sample(model, tiny_clip, LATENT, steps=2, latent=latent[:1])
    assert torch.allclose(patched[0], single[0], atol=1e-4)  # same noise for the first image: same result


def test_area_conditioning_logs_the_documented_limitation(tiny_unet, tiny_encoder, subjects, tiny_clip, caplog):
    model, _ = apply(tiny_unet, tiny_encoder, subjects, layout(BOXES))
    positive, negative = encode_text(tiny_clip, PROMPT), encode_text(tiny_clip, "blurry")
    positive[0][1]["area"] = (8, 12, 0, 0)  # ConditioningSetArea: the top-left quarter, in latent pixels
    positive[0][1]["strength"] = 1.0
    noise = torch.randn(1, 4, *LATENT, generator=torch.Generator().manual_seed(0))
    with caplog.at_level(logging.WARNING, logger="comfyui_multisubject"):
        out = comfy.sample.sample(model, noise, 2, 5.0, "euler", "normal", positive, negative, torch.zeros(1, 4, *LATENT),
                                  seed=0, disable_pbar=True)
    assert torch.isfinite(out).all()
    assert "area conditioning" in caplog.text


def test_an_interrupted_run_leaves_the_next_run_clean(tiny_unet, tiny_encoder, subjects, tiny_clip):
    model, routes = apply(tiny_unet, tiny_encoder, subjects, layout(BOXES), auto_routing=True, prompt=PROMPT, start_step=1)
    reference = sample(model, tiny_clip, LATENT, steps=4, prompt=PROMPT)

    def interrupt_at_step_two(step, *args):
        if step == 1:
            comfy.model_management.interrupt_current_processing(True)

    with pytest.raises(comfy.model_management.InterruptProcessingException):
        sample(model, tiny_clip, LATENT, steps=4, prompt=PROMPT, callback=interrupt_at_step_two)
    comfy.model_management.interrupt_current_processing(False)
    assert torch.equal(sample(model, tiny_clip, LATENT, steps=4, prompt=PROMPT), reference)


def test_fifty_runs_in_one_server_do_not_grow_memory(comfy_server):
    process = psutil.Process(comfy_server.process.pid)
    graph = two_subject_graph(auto_routing=True, steps=2, preview=True)
    sampler = next(i for i, n in graph.nodes.items() if n["class_type"] == "KSampler")

    def run(seed):
        graph.nodes[sampler]["inputs"]["seed"] = seed  # a new seed: really sample again
        assert comfy_server.run(graph.prompt())["status"]["status_str"] == "success"

    for seed in range(10):
        run(seed)
    warm = process.memory_info().rss
    for seed in range(10, 50):
        run(seed)
    grown = process.memory_info().rss - warm
    assert grown < 64 * 2**20, f"resident memory grew by {grown / 2**20:.1f} MiB over 40 runs"
