"""A phrase missing from the positive prompt, or a box labelled with another phrase: warned, in the log and on the node."""

import json

import torch

import browser_support
from graphs import out, two_subject_graph
from msp_package import pack

warnings_mod = pack("nodes.subject_warnings")
registry = pack("attention_patches.kinds.registry")
MS_DIFFUSION = next(k for k in registry.KINDS if k.kind == "ms_diffusion_sdxl")


def apply_id(prompt: dict) -> str:
    return next(i for i, n in prompt.items() if n["class_type"] == "MSP_ApplyMultiSubjectAttention")


def test_positive_prompts_follow_the_sampler_of_this_apply_through_lora_and_controlnet():
    graph = two_subject_graph(prompt="a dog and a cat")
    prompt = graph.prompt()
    assert warnings_mod.positive_prompts(prompt, apply_id(prompt)) == ["a dog and a cat"]  # not the negative 'blurry'

    sampler = next(n for n in prompt.values() if n["class_type"] == "KSampler")
    lora = graph.add("LoraLoader", model=out(apply_id(prompt)), clip=out("1", 1), lora_name="x", strength_model=1.0,
                     strength_clip=1.0)
    control = graph.add("ControlNetApplyAdvanced", positive=sampler["inputs"]["positive"], negative=sampler["inputs"]["negative"],
                        control_net=out("99"), image=out("98"), strength=1.0, start_percent=0.0, end_percent=1.0)
    prompt = graph.prompt()
    ksampler = next(n for n in prompt.values() if n["class_type"] == "KSampler")
    ksampler["inputs"].update(model=out(lora), positive=out(control), negative=out(control, 1))
    assert warnings_mod.positive_prompts(prompt, apply_id(prompt)) == ["a dog and a cat"]
    ksampler["inputs"]["model"] = out("1")  # sampled without the patched MODEL: not this Apply's prompt
    assert warnings_mod.positive_prompts(prompt, apply_id(prompt)) == []
    assert warnings_mod.positive_prompts({"1": "junk", "2": {"inputs": {"positive": ["1", 0], "model": ["2", 0]}}}, "3") == []


def test_the_warnings_name_the_subject_and_the_fix():
    found = warnings_mod.subject_warnings(["dog", "cat"], ["dog", "cat"], ["Two dogs and a cat"], MS_DIFFUSION)
    assert found == []  # case-insensitive, plural allowed
    found = warnings_mod.subject_warnings(["dog", "hat"], ["dog", "cat"], ["a dog and a cat"], MS_DIFFUSION)
    assert len(found) == 2
    assert "subject 2's phrase 'hat' is not in the positive prompt" in found[0]
    assert "box 2 is labelled 'cat' but subject 2 is 'hat'" in found[1]
    assert warnings_mod.subject_warnings(["hat"], [""], [], MS_DIFFUSION) == []  # no prompt text known, no label: nothing to say
    unsafe = warnings_mod.subject_warnings(["d\udcffg"], ["x" * 10_000], ["a dog"], MS_DIFFUSION)
    for line in unsafe:
        line.encode("utf-8")  # lone surrogates escaped: safe to log and to send
        assert len(line) < 400


def test_a_phrase_missing_from_the_prompt_is_shown_on_the_apply_node_and_logged(comfy_server):
    graph = two_subject_graph(phrases=("dog", "hat"), prompt="a dog and a cat on a lawn", preview=False, steps=1)
    prompt = graph.prompt()
    prompt[next(i for i, n in prompt.items() if n["class_type"] == "MSP_DrawLayoutBox")]["inputs"]["boxes"] = json.dumps(
        [{"x1": 0, "y1": 0.25, "x2": 0.4, "y2": 0.75, "label": "dog"}, {"x1": 0.6, "y1": 0.25, "x2": 1, "y2": 0.75, "label": "cat"}])
    shown = []
    history = comfy_server.run(prompt, on_event=lambda kind, data: shown.append(data) if kind == "progress_text" else None)
    assert history["status"]["status_str"] == "success"  # a warning, not an error
    on_apply = "\n".join(d["text"] for d in shown if d["node"] == apply_id(prompt))
    assert "subject 2's phrase 'hat' is not in the positive prompt" in on_apply
    assert "box 2 is labelled 'cat' but subject 2 is 'hat'" in on_apply
    assert "'hat' is not in the positive prompt" in comfy_server.log()


SHOW_AND_RUN = """
const [prompt, applyId] = args;
window.app.loadApiJson(prompt, 'warnings');
await window.app.queuePrompt(0, 1);
const node = window.app.graph.getNodeById(Number(applyId));
for (let i = 0; i < 1200; i++) {
  const shown = node.widgets?.find((w) => w.name === '$$node-text-preview');
  if (shown?.value) return shown.value;
  await new Promise((r) => setTimeout(r, 100));
}
return null;
"""


@browser_support.requires_browser
def test_the_warning_appears_on_the_apply_node_in_the_real_frontend(comfy_server, tmp_path):
    prompt = two_subject_graph(phrases=("dog", "hat"), prompt="a dog and a cat on a lawn", preview=False, steps=1).prompt()
    with browser_support.browser_session(comfy_server, tmp_path / "profile") as driver:
        shown = browser_support.js(driver, SHOW_AND_RUN, prompt, apply_id(prompt))
    assert shown and "subject 2's phrase 'hat' is not in the positive prompt" in shown


def test_the_phrase_warning_names_the_kind_in_use_and_its_tokenizer_never_another_kind():
    for kind in registry.KINDS:
        found = warnings_mod.subject_warnings(["hat"], [], ["a dog"], kind)
        others = [k.title for k in registry.KINDS if k is not kind]
        if kind.capabilities.phrase_tokenizer is None:  # no phrase grounding: a phrase missing from the prompt is fine
            assert found == [], kind.kind
            continue
        assert len(found) == 1 and kind.title in found[0] and kind.capabilities.phrase_tokenizer in found[0], found
        assert not any(title.split(" (")[0] in found[0] for title in others), found


def test_an_input_the_kind_does_not_read_is_warned_naming_the_input_and_the_kind():
    base = pack("attention_patches.kinds.base")
    reference = base.Reference("dog", torch.zeros(1, 8, 8, 3), clip_vision=object(), clip=object(), vae=object(),
                               query="a dog", mask_weight=5.0, description="a brown dog")
    for kind in registry.KINDS:
        found = warnings_mod.unused_input_warnings(kind, reference)
        unread = {"clip_vision", "clip", "vae", "query", "description"} - kind.capabilities.reference_inputs
        assert sorted(w.split("'")[2] for w in found) == sorted(unread), (kind.kind, found)
        assert all(kind.title in w for w in found)
    plain = base.Reference("dog", torch.zeros(1, 8, 8, 3), mask_weight=5.0)  # widgets at their defaults: nothing set
    assert all(warnings_mod.unused_input_warnings(kind, plain) == [] for kind in registry.KINDS)


def test_encode_reference_warns_on_its_own_node_when_it_encodes(tiny_vision, tiny_clip, tiny_encoder, caplog):
    nodes = pack("nodes")
    image = torch.rand(1, 32, 32, 3)
    nodes.EncodeReference.execute(clip_vision=tiny_vision, clip=tiny_clip, image=image, phrase="dog", query="a dog",
                                  subject_encoder=tiny_encoder)
    assert "Encode Reference: Encode Reference's 'query' is set but MS-Diffusion (SDXL) does not read it" in caplog.text


def test_encode_reference_tooltips_name_the_kinds_that_read_each_input():
    nodes = pack("nodes")
    inputs = {i.id: i for i in nodes.EncodeReference.define_schema().inputs}
    for name in ("clip_vision", "clip", "vae", "query", "mask_weight", "description"):
        for kind in registry.KINDS:
            assert (kind.title in inputs[name].tooltip) == (name in kind.capabilities.reference_inputs), (name, kind.kind)
