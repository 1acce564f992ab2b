"""The pack inside the real ComfyUI server: import, node info, a full graph over HTTP, errors."""

import json
import re
import subprocess
import sys

import pytest

from devkit.runtime import COMFYUI_ROOT
from graphs import two_subject_graph
from devkit.pack import pack
from devkit.server import ComfyServer, PromptRefused

PACK_NODES = ["MSP_LoadSubjectEncoder", "MSP_EncodeReference", "MSP_DrawLayoutBox", "MSP_ApplyMultiSubjectAttention",
              "MSP_RouterMaskPreview"]


def test_pack_imports_in_quick_test_for_ci(tmp_path):
    """Judged by ComfyUI's own lines about the pack's folder, never by any line that merely mentions its name.

    ComfyUI's tracebacks for its audio nodes (torchaudio is not installed) carry the checkout's path, which
    contains the pack's folder name when the repository is cloned as README says.
    """
    server = ComfyServer(tmp_path, test_nodes=False)
    result = subprocess.run(
        [sys.executable, "main.py", "--cpu", "--quick-test-for-ci", "--base-directory", str(tmp_path),
         "--database-url", "sqlite:///:memory:"],
        cwd=COMFYUI_ROOT, capture_output=True, text=True, timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    pack_folder = server.base / "custom_nodes" / "comfyui-multisubject"
    assert pack_folder.exists()
    import_times = re.findall(r"^\s*[\d.]+ seconds( \(IMPORT FAILED\))?: (.+)$", output, flags=re.MULTILINE)
    assert [failed for failed, path in import_times if path == str(pack_folder)] == [""], output[-3000:]
    assert f"Cannot import {pack_folder} module" not in output, output[-3000:]


def test_object_info_lists_the_nodes(comfy_server):
    info = comfy_server.get("/object_info")
    for node_id in PACK_NODES:
        assert node_id in info, node_id
        assert info[node_id]["category"] == "multi_subject"
    kind, options = info["MSP_LoadSubjectEncoder"]["input"]["required"]["encoder_name"]
    assert kind == "COMBO" and "ms_adapter.bin" in options["options"]
    assert info["MSP_ApplyMultiSubjectAttention"]["output"] == ["MODEL", "MSP_ROUTES"]
    assert info["MSP_RouterMaskPreview"]["output_node"] is True


def test_two_subject_graph_runs_end_to_end(comfy_server):
    history = comfy_server.run(two_subject_graph().prompt())
    assert history["status"]["status_str"] == "success", json.dumps(history["status"])[:3000]
    outputs = history["outputs"]
    saved = next(o["images"] for o in outputs.values() if o.get("images") and o["images"][0]["type"] == "output")
    from PIL import Image

    image = Image.open(comfy_server.base / "output" / saved[0]["subfolder"] / saved[0]["filename"])
    assert image.size == (192, 128)
    previews = [o["images"] for o in outputs.values() if o.get("images") and o["images"][0]["type"] == "temp"]
    assert previews, outputs


def test_invalid_graph_is_a_node_error_and_the_server_keeps_serving(comfy_server):
    bad = two_subject_graph(boxes=[[0, 0, 0, 0], [0.5, 0, 1, 1]]).prompt()
    with pytest.raises(PromptRefused) as error:
        comfy_server.run(bad)
    assert error.value.status == 400
    node_errors = error.value.body["node_errors"]
    messages = json.dumps(node_errors)
    assert "all zeros" in messages and any(e["class_type"] == "MSP_DrawLayoutBox" for e in node_errors.values())
    assert comfy_server.get("/system_stats")["system"]["comfyui_version"] == "0.3.75"


def test_runtime_errors_name_the_problem_and_the_server_keeps_serving(comfy_server):
    one_box = two_subject_graph(boxes=[{"x1": 0, "y1": 0, "x2": 1, "y2": 1}], preview=False).prompt()
    history = comfy_server.run(one_box)
    assert history["status"]["status_str"] == "error"
    error = next(m for kind, m in history["status"]["messages"] if kind == "execution_error")
    assert error["node_type"] == "MSP_ApplyMultiSubjectAttention"
    assert "2 subject(s) ('dog', 'cat') but 1 box(es)" in error["exception_message"]
    again = comfy_server.run(two_subject_graph(preview=False, steps=1).prompt())
    assert again["status"]["status_str"] == "success"


def test_adding_a_preview_to_an_auto_routing_graph_captures_the_routes(comfy_server):
    """The first run has no preview (nothing captured); adding one re-runs Apply, which then captures."""
    from PIL import Image

    without = two_subject_graph(auto_routing=True, preview=False, steps=3).prompt()
    assert comfy_server.run(without)["status"]["status_str"] == "success"
    history = comfy_server.run(two_subject_graph(auto_routing=True, preview=True, steps=3).prompt())
    assert history["status"]["status_str"] == "success", json.dumps(history["status"])[:3000]
    preview = next(o["images"][0] for o in history["outputs"].values() if o.get("images") and o["images"][0]["type"] == "temp")
    sheet = Image.open(comfy_server.base / "temp" / preview["subfolder"] / preview["filename"])
    # a grid: the boxes, then the routes the model used, each row at both UNet resolutions
    min_width = pack("attention_patches.route_preview").MIN_SHEET_WIDTH  # widened for the in-box share notes under it
    assert sheet.width == max(2 * 192, min_width) and sheet.height > 2 * 128
