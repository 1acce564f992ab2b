"""Hostile text from users, workflows and file names: every error is safe to log and the server keeps running."""

import json

from graphs import two_subject_graph
from msp_package import pack

LONE_SURROGATE = "\ud800"


def node_id_of(graph, class_type: str) -> str:
    return next(i for i, n in graph.nodes.items() if n["class_type"] == class_type)


def execution_error(history: dict) -> dict:
    return next(m for kind, m in history["status"]["messages"] if kind == "execution_error")


def assert_next_prompt_runs(server) -> None:
    history = server.run(two_subject_graph(preview=False).prompt(), timeout=120)
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
    history = comfy_server.run(graph.prompt(), timeout=120)
    error = execution_error(history)
    assert error["node_type"] == "MSP_LoadSubjectEncoder"
    assert "not_a_model_\\udcff.bin" in error["exception_message"]
    assert_next_prompt_runs(comfy_server)


def test_quoted_text_is_printable_bounded_and_encodable():
    safe_text = pack("attention_patches.safe_text")
    text = safe_text.quoted("a\ud800b\x00c\u202e" + "x" * 10_000)
    text.encode("utf-8")
    assert text.startswith("'a\\ud800b\\x00c\\u202e") and "(10006 characters)" in text and len(text) < 200
    assert safe_text.quoted("café 狗") == "'café 狗'"
    assert safe_text.loggable("line 1\nline\ud8002") == "line 1\nline\\ud8002"
