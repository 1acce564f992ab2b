"""Hostile text from users, workflows and file names: every error is safe to log and the server keeps running."""

import json
import os

import pytest

from graphs import two_subject_graph
from devkit.pack import pack

LONE_SURROGATE = "\ud800"


def node_id_of(graph, class_type: str) -> str:
    return next(i for i, n in graph.nodes.items() if n["class_type"] == class_type)


def execution_error(history: dict) -> dict:
    return next(m for kind, m in history["status"]["messages"] if kind == "execution_error")


def assert_next_prompt_runs(server) -> None:
    history = server.run(two_subject_graph(preview=False, steps=1, width=64, height=64).prompt(), timeout=120)
    assert history["status"]["status_str"] == "success", json.dumps(history["status"])[:2000]


def test_a_lone_surrogate_in_subject_scales_is_an_error_and_the_next_prompt_runs(comfy_server):
    graph = two_subject_graph(preview=False)
    graph.nodes[node_id_of(graph, "MSP_ApplyMultiSubjectAttention")]["inputs"]["subject_scales"] = "0.5, x" + LONE_SURROGATE
    history = comfy_server.run(graph.prompt(), timeout=120)
    error = execution_error(history)
    assert error["node_type"] == "MSP_ApplyMultiSubjectAttention"
    assert "subject_scales" in error["exception_message"]
    assert_next_prompt_runs(comfy_server)


def test_a_model_file_name_with_non_utf8_bytes_is_an_error_and_the_next_prompt_runs(comfy_server):
    folder = comfy_server.base / "models" / "msdiffusion"
    raw = folder.as_posix().encode() + b"/not_a_model_\xff.bin"
    with open(raw, "wb") as f:
        f.write(b"this is not a checkpoint\n")
    name = "not_a_model_\udcff.bin"  # how Python (and so ComfyUI's file list) spells the byte 0xff
    graph = two_subject_graph(preview=False, encoder=name)
    try:
        history = comfy_server.run(graph.prompt(), timeout=120)
    finally:
        os.remove(raw)
    error = execution_error(history)
    assert error["node_type"] == "MSP_LoadSubjectEncoder"
    assert "not_a_model_\\udcff.bin" in error["exception_message"]
    assert_next_prompt_runs(comfy_server)


def test_a_lone_surrogate_in_a_box_label_is_logged_safely_and_the_next_prompt_runs(comfy_server):
    boxes = [{"x1": 0, "y1": 0.25, "x2": 0.4, "y2": 0.75, "label": "d" + LONE_SURROGATE + "g"},
             {"x1": 0.6, "y1": 0.25, "x2": 1, "y2": 0.75, "label": "cat"}]
    seen = len(comfy_server.log())
    history = comfy_server.run(two_subject_graph(preview=False, boxes=boxes, steps=1).prompt(), timeout=120)
    assert history["status"]["status_str"] == "success"  # a label that differs from its phrase only warns
    log = comfy_server.log()[seen:]
    assert "box 1 is labelled 'd\\ud800g' but subject 1 is 'dog'" in log and "Logging error" not in log
    assert_next_prompt_runs(comfy_server)


def test_a_lone_surrogate_in_a_phrase_missing_from_the_prompt_is_an_error_and_the_next_prompt_runs(comfy_server):
    graph = two_subject_graph(preview=False, auto_routing=True, phrases=("zebra" + LONE_SURROGATE, "cat"))
    history = comfy_server.run(graph.prompt(), timeout=120)
    error = execution_error(history)
    assert error["node_type"] == "MSP_ApplyMultiSubjectAttention" and "zebra\\ud800" in error["exception_message"]
    assert_next_prompt_runs(comfy_server)


def test_quoted_text_is_printable_bounded_and_encodable():
    safe_text = pack("models.safe_text")
    text = safe_text.quoted("a\ud800b\x00c\u202e" + "x" * 10_000)
    text.encode("utf-8")
    assert text.startswith("'a\\ud800b\\x00c\\u202e") and "(10006 characters)" in text and len(text) < 200
    assert safe_text.quoted("café 狗") == "'café 狗'"
    assert safe_text.loggable("line 1\nline\ud8002") == "line 1\nline\\ud8002"


# ---- property: any text in any STRING or COMBO input of the pack's nodes ---------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from devkit.server import PromptRefused  # noqa: E402

ANY_CHARACTER = st.characters(exclude_categories=())  # lone surrogates and control characters included
HOSTILE_TEXT = st.one_of(
    st.text(ANY_CHARACTER, max_size=40),
    st.sampled_from(["", " ", "\x00", "\ud800", "\udcff.bin", "dog\u202e", "nan", "inf", "1e308", "-1", "final",
                     "0.5, 0.9", "[]", "{}", "[[0, 0, 1, 1]]", "../../etc/passwd", "ms_adapter.bin"]),
    st.builds(lambda c, n: c * n, st.text(ANY_CHARACTER, min_size=1, max_size=3), st.integers(1_000, 40_000)),
)


def text_inputs(server) -> list[tuple[str, str]]:
    """(node id, input name) of every STRING and COMBO input of the pack's nodes, from the server's /object_info."""
    found = []
    for node_id, info in server.get("/object_info").items():
        if not node_id.startswith("MSP_"):
            continue
        for group in ("required", "optional"):
            for name, spec in info["input"].get(group, {}).items():
                kind = spec[0]
                if kind in ("STRING", "COMBO") or isinstance(kind, list):
                    found.append((node_id, name))
    return sorted(found)


@pytest.fixture(scope="module")
def pack_text_inputs(comfy_server):
    inputs = text_inputs(comfy_server)
    assert {("MSP_LoadSubjectEncoder", "encoder_name"), ("MSP_EncodeReference", "phrase"), ("MSP_DrawLayoutBox", "boxes"),
            ("MSP_DrawLayoutBox", "preset"), ("MSP_ApplyMultiSubjectAttention", "subject_scales"),
            ("MSP_RouterMaskPreview", "steps")} <= set(inputs)
    return inputs


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data(), text=HOSTILE_TEXT)
def test_any_text_in_any_string_or_combo_input_is_answered_on_its_node(comfy_server, pack_text_inputs, data, text):
    graph = two_subject_graph(steps=1, width=64, height=64)
    in_graph = sorted({node["class_type"] for node in graph.nodes.values()})  # a kind's settings node has its own tests
    class_type, name = data.draw(st.sampled_from([i for i in pack_text_inputs if i[0] in in_graph]), label="input")
    target = node_id_of(graph, class_type)
    graph.nodes[target]["inputs"][name] = text
    try:
        history = comfy_server.run(graph.prompt(), timeout=120)
    except PromptRefused as refused:
        assert refused.status == 400, refused.body
        assert set(refused.body.get("node_errors", {})) == {target}, refused.body
        assert comfy_server.get("/queue") is not None  # the server still answers
        return
    if history["status"]["status_str"] != "success":
        error = execution_error(history)
        assert error["node_id"] == target, error
        assert_next_prompt_runs(comfy_server)
