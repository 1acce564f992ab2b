"""Wrong or unusual inputs (the README's table): each gives a clear result, nothing is lost, the server survives."""

import json
import logging

import psutil
import pytest
import torch

import comfy.model_management

from comfy_server import PromptRefused
from graphs import two_subject_graph
from helpers import apply, encode_subjects, encode_text, layout, plain_attention, reference_image, sample
from msp_package import pack

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


# --- silent or misleading cases: each now refused or warned by name ---------------------------------------------------

base = pack("attention_patches.kinds.base")
registry = pack("attention_patches.kinds.registry")
nodes = pack("nodes")


def test_ms_diffusion_encodings_are_not_reused_by_an_encoder_reading_other_features(tiny, tmp_path, tiny_unet, tiny_encoder,
                                                                                     tiny_vision, tiny_clip):
    """Switching Load Subject Encoder to a file for another CLIP-Vision must re-encode, and name the width mismatch."""
    subjects = encode_subjects(tiny_vision, tiny_clip, ["dog", "cat"], subject_encoder=tiny_encoder)
    other = registry.load_subject_encoder(tiny.save_subject_encoder(tmp_path / "vit_h.safetensors",
                                                                    vision_width=tiny.VIT_H_STANDIN_WIDTH))
    with pytest.raises(base.SubjectSetupError, match="the reference was encoded with"):
        apply(tiny_unet, other, subjects, layout(BOXES))


@pytest.fixture(scope="module")
def sd15_kinds(tmp_path_factory):
    """SSR-Encoder and FastComposer on their tiny stand-ins: {kind: (encoder, Encode Reference inputs)}."""
    import tiny_sd15
    import tiny_sd15_fastcomposer

    folder = tmp_path_factory.mktemp("soft_masks")
    ssr = registry.load_subject_encoder(tiny_sd15.save_ssr_files(folder, tiny_sd15.ssr_manifest(), "community")[0])
    fastcomposer = registry.load_subject_encoder(tiny_sd15_fastcomposer.save_fastcomposer(folder / "fastcomposer.safetensors"))
    return {"ssr_encoder": (ssr, {"clip_vision": tiny_sd15.tiny_vit_l(), "clip": tiny_sd15.tiny_sd15_clip()}),
            "fastcomposer": (fastcomposer, {"clip": tiny_sd15_fastcomposer.tiny_sd15_clip()})}


@pytest.mark.parametrize("kind", ["ssr_encoder", "fastcomposer"])
def test_a_soft_mask_below_the_threshold_is_refused_instead_of_encoding_a_blank(sd15_kinds, kind):
    """A low-confidence matte (all values < 0.5) binarises to nothing: two photos would give identical images."""
    encoder, inputs = sd15_kinds[kind]

    def encoded(seed, level):
        mask = torch.zeros(1, 64, 48)
        mask[:, 8:56, 8:40] = level
        out = nodes.EncodeReference.execute(image=reference_image(seed), phrase="man", mask=mask, subject_encoder=encoder,
                                            **inputs)
        return encoder.encodings[out.args[0][0].reference]

    for seed in (0, 1):
        with pytest.raises(ValueError, match=r"MASK selects nothing in view\(s\) 1.*highest value there is 0\.40"):
            encoded(seed, 0.4)
    first, second = (encoded(seed, 0.6) for seed in (0, 1))  # a matte above the threshold keeps each photo's subject
    tokens = (first.tokens, second.tokens) if kind == "ssr_encoder" else (first, second)
    assert not torch.allclose(*tokens)


class ReplacingPack:
    """Another pack's attn2 replacement on every key; ``chains``: it calls the patch it found (a good neighbour)."""

    def __init__(self, found, chains: bool):
        self.found = found if chains else None

    def __call__(self, q, k, v, extra_options):
        if self.found is not None:
            return self.found(q, k, v, extra_options)
        return plain_attention(q, k, v, extra_options)


@pytest.mark.parametrize("chains", [False, True], ids=["replaces", "chains"])
def test_apply_warns_when_another_node_replaced_its_patches_before_sampling(tiny_unet, tiny_encoder, subjects, tiny_clip,
                                                                           caplog, chains):
    model, _ = apply(tiny_unet, tiny_encoder, subjects, layout(BOXES))
    with caplog.at_level(logging.WARNING, logger="comfyui_multisubject"):
        sample(model, tiny_clip, LATENT, steps=1)
    assert "were replaced by another node" not in caplog.text
    other = model.clone()
    for key, found in model.model_options["transformer_options"]["patches_replace"]["attn2"].items():
        other.set_model_attn2_replace(ReplacingPack(found, chains), *key)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="comfyui_multisubject"):
        sample(other, tiny_clip, LATENT, steps=1)
    assert ("were replaced by another node" in caplog.text) is not chains


@pytest.fixture(scope="module")
def anystory():
    import anystory_tiny

    checkpoint, safe_load = pack("models.anystory.checkpoint"), pack("models.safe_load")
    encoder_mod = pack("attention_patches.kinds.anystory.encoder")
    encoder = encoder_mod.AnyStoryEncoder("anystory.bin", checkpoint.build_weights(safe_load.flatten(anystory_tiny.tiny_anystory()), "t"))
    subjects = tuple(encoder.with_encoding(base.Reference(f"subject {i}", torch.zeros(1, 8, 8, 3)), encoding)  # no CLIP
                     for i, encoding in enumerate(anystory_tiny.tiny_encodings(2)))
    return anystory_tiny.tiny_flux_model(), encoder, subjects


@pytest.mark.parametrize("start, end", [(0.5, 0.5), (0.8, 0.2)])
def test_anystory_refuses_a_window_that_never_opens(anystory, start, end):
    model, encoder, subjects = anystory
    with pytest.raises(base.SubjectSetupError, match="start_percent .* must be below end_percent"):
        encoder.apply(model, subjects, None, base.ApplySettings(start_percent=start, end_percent=end))


def test_anystory_with_auto_routing_names_its_learned_router_not_a_clip(anystory):
    model, encoder, subjects = anystory
    with pytest.raises(base.SubjectSetupError, match="own learned router") as error:
        nodes.ApplyMultiSubjectAttention.execute(model=model, subject_encoder=encoder, subjects=subjects, scale=0.6,
                                                 start_percent=0.0, end_percent=1.0, drop_grounding=False, auto_routing=True,
                                                 prompt="subject 0 and subject 1")
    assert "clip" not in str(error.value).lower()


def test_apply_warns_when_its_prompt_places_the_words_elsewhere_than_the_positive_prompt():
    warnings_mod = pack("nodes.subject_warnings")
    phrases = ["man", "woman"]
    assert warnings_mod.prompt_warnings(phrases, "a man and a woman", ["a man and a woman at the beach"]) == []
    assert warnings_mod.prompt_warnings(phrases, "", ["a woman and a man"]) == []  # no prompt: nothing looked up there
    swapped = warnings_mod.prompt_warnings(phrases, "a man and a woman", ["a woman and a man at the beach"])
    assert len(swapped) == 1 and "other positions" in swapped[0] and "'a woman and a man at the beach'" in swapped[0]
    shifted = warnings_mod.prompt_warnings(phrases, "a man and a woman", ["photo, a man and a woman"])
    assert len(shifted) == 1  # same order, but every word one token later


def test_a_sam_box_of_fifty_thousand_brackets_is_named_without_recursion():
    layout_mod = pack("attention_patches.layout")
    with pytest.raises(layout_mod.LayoutError, match="sam_box: expected four fractions .* 50000 brackets"):
        nodes.EncodeReference.execute(image=torch.rand(1, 32, 32, 3), phrase="dog", background_removal="sam_vit_b.pth",
                                      sam_box="[" * 50000)


def test_unopenable_symlinks_are_not_listed_in_load_subject_encoder(tiny, tmp_path, monkeypatch):
    import folder_paths

    paths = pack("nodes.paths")
    tiny.save_subject_encoder(tmp_path / "real.safetensors")
    (tmp_path / "dangling.safetensors").symlink_to(tmp_path / "gone.safetensors")
    (tmp_path / "loop.safetensors").symlink_to(tmp_path / "loop.safetensors")
    (tmp_path / "device.safetensors").symlink_to("/dev/null")
    (tmp_path / "linked.safetensors").symlink_to(tmp_path / "real.safetensors")
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "msdiffusion", ([str(tmp_path)], {".safetensors"}))
    monkeypatch.setattr(folder_paths, "filename_list_cache", {})
    listed = set(paths.encoder_files())
    assert {"real.safetensors", "linked.safetensors"} <= listed
    assert not listed & {"dangling.safetensors", "loop.safetensors", "device.safetensors"}


def test_a_message_over_the_length_limit_keeps_its_exception_class():
    safe_errors, safe_text = pack("nodes.safe_errors"), pack("models.safe_text")

    class Node:
        @classmethod
        def execute(cls):
            raise base.SubjectSetupError("Apply: " + "x" * 5000)

    safe_errors.loggable_errors(Node)
    with pytest.raises(base.SubjectSetupError) as error:
        Node.execute()
    assert str(error.value).startswith("Apply: xxx") and len(str(error.value)) < safe_text.MESSAGE_LIMIT + 40
