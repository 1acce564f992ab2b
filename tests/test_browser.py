"""The Draw Layout Box canvas in the real ComfyUI frontend, in headless Chromium, end to end.

Boxes are drawn with real mouse drags and a real keyboard; what counts is the hidden `boxes`
STRING (workflow JSON, API prompt) and what the backend received (MSPTest_LayoutEcho).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest
from selenium.webdriver.common.keys import Keys

from browser_support import browser_session, click_at, drag, js, open_app, requires_browser, severe_logs, wait_for

log = logging.getLogger(__name__)

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
EXTENSION_FILE = "layout_box_canvas.js"
WIDTH, HEIGHT = 768, 512
GRID = 8

pytestmark = requires_browser


@pytest.fixture(scope="module")
def browser(comfy_server, tmp_path_factory):
    with browser_session(comfy_server, tmp_path_factory.mktemp("chromium-profile")) as driver:
        yield driver


# ------------------------------------------------------------------ page helpers

NEW_GRAPH = """
const [width, height, withImage] = args;
const graph = app.graph;
graph.clear();
app.canvas.ds.scale = 1;
app.canvas.ds.offset = [260, 110];
const box = LiteGraph.createNode('MSP_DrawLayoutBox');
box.pos = [0, 0];
graph.add(box);
box.size = [520, 640];
// set programmatically, no callbacks: the canvas must notice by itself
box.widgets.find((w) => w.name === 'width').value = width;
box.widgets.find((w) => w.name === 'height').value = height;
const echo = LiteGraph.createNode('MSPTest_LayoutEcho');
echo.pos = [560, 0];
graph.add(echo);
box.connect(0, echo, 0);
let image = null;
if (withImage) {
  image = LiteGraph.createNode('LoadImage');
  image.pos = [560, 160];
  graph.add(image);
  image.widgets.find((w) => w.name === 'image').value = 'dog.png';
  image.connect(0, box, box.findInputSlot('image'));
}
app.canvas.setDirty(true, true);
return {box: box.id, echo: echo.id, image: image && image.id};
"""

EDITOR = """
const node = app.graph.getNodeById(args[0]);
const canvasWidget = node.widgets.find((w) => w.name === 'layout_canvas');
const boxesWidget = node.widgets.find((w) => w.name === 'boxes');
"""


def debug(driver, node_id):
    """What the canvas shows (its debug accessor) plus the raw STRING widget value."""
    return js(driver, EDITOR + "return {...canvasWidget.mspDebug(), value: boxesWidget.value};", node_id)


def boxes_value(driver, node_id):
    return json.loads(debug(driver, node_id)["value"])


def canvas_rect(driver, node_id):
    """The node's canvas element in viewport pixels, once laid out with the output's aspect ratio."""

    def laid_out():
        r = js(driver, EDITOR + """
            const rect = canvasWidget.element.querySelector('canvas.msp-layout-canvas').getBoundingClientRect();
            const d = canvasWidget.mspDebug();
            return {left: rect.left, top: rect.top, width: rect.width, height: rect.height, size: d.size, css: d.canvasCss};
        """, node_id)
        ok = r["width"] > 100 and r["size"] == [WIDTH, HEIGHT] and abs(r["width"] / r["height"] - WIDTH / HEIGHT) < 0.01
        return r if ok else None

    return wait_for(laid_out, message="the layout canvas at the output's aspect ratio")


def at(rect, fx, fy):
    """Viewport point of the image fractions (fx, fy) on the canvas."""
    return rect["left"] + fx * rect["width"], rect["top"] + fy * rect["height"]


def element(driver, node_id, selector):
    return driver.execute_script(
        "const n = app.graph.getNodeById(arguments[0]);"
        "return n.widgets.find((w) => w.name === 'layout_canvas').element.querySelector(arguments[1]);",
        node_id, selector,
    )


def mouse_drag(driver, rect, start, end, steps=6):
    (x0, y0), (x1, y1) = at(rect, *start), at(rect, *end)
    points = [(x0 + (x1 - x0) * i / steps, y0 + (y1 - y0) * i / steps) for i in range(steps + 1)]
    drag(driver, points)


def assert_on_grid(value, size, what):
    cells = value * size / GRID
    assert abs(cells - round(cells)) < 0.02, f"{what} = {value} is not on the {GRID}-pixel grid of {size}"


def assert_near(value, expected, size, what):
    assert abs(value - expected) <= (GRID / 2 + 2) / size + 1e-3, f"{what} = {value}, dragged to {expected:.4f}"


def history_entries(server):
    return server.get("/history")


def queue_from_the_ui(driver, server) -> dict:
    """Queue the graph as the Queue button does and wait for its successful /history entry."""
    known = set(history_entries(server))
    # (queuePrompt's boolean is not a success flag in frontend 1.32: an empty node_errors {} reads as "errors")
    js(driver, "await app.queuePrompt(0);")

    def finished():
        fresh = {k: v for k, v in history_entries(server).items() if k not in known}
        return next((v for v in fresh.values() if v.get("status", {}).get("completed")), None)

    entry = wait_for(finished, timeout=60, message="the queued prompt in /history")
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:2000]
    return entry


# ------------------------------------------------------------------ tests


def test_canvas_edits_reach_workflow_prompt_and_backend(browser, comfy_server):
    started = time.monotonic()
    driver = browser
    ids = js(driver, NEW_GRAPH, WIDTH, HEIGHT, True)
    node = ids["box"]
    rect = canvas_rect(driver, node)
    # the default layout is shown, and the canvas widget is not part of the saved values
    assert len(debug(driver, node)["rendered"]) == 2
    assert js(driver, EDITOR + "return node.serialize().widgets_values.length;", node) == 4
    assert debug(driver, node)["boxesHidden"] is True

    element(driver, node, "button.msp-layout-clear").click()
    wait_for(lambda: boxes_value(driver, node) == [], message="Clear to empty the STRING")

    # two boxes by real drags on empty space; each is selected after drawing, label typed in the input
    label = element(driver, node, "input.msp-layout-label")
    drawn = {"dog": ((0.06, 0.12), (0.44, 0.72)), "cat": ((0.55, 0.2), (0.93, 0.88))}
    for name, (start, end) in drawn.items():
        count = len(boxes_value(driver, node))
        mouse_drag(driver, rect, start, end)
        wait_for(lambda: len(boxes_value(driver, node)) == count + 1, message=f"the {name} box in the STRING")
        label.click()
        label.send_keys(name)
        wait_for(lambda: boxes_value(driver, node)[-1]["label"] == name, message=f"label {name} in the STRING")

    boxes = boxes_value(driver, node)
    for box, (start, end) in zip(boxes, drawn.values()):
        for key, expected, size in (("x1", start[0], WIDTH), ("y1", start[1], HEIGHT), ("x2", end[0], WIDTH), ("y2", end[1], HEIGHT)):
            assert_on_grid(box[key], size, key)
            assert_near(box[key], expected, size, key)

    # rename box 1: select it by a click inside, edit the label input with the keyboard
    click_at(driver, *at(rect, 0.2, 0.4))
    wait_for(lambda: debug(driver, node)["selected"] == 0, message="box 1 selected by a click")
    label.click()
    label.send_keys(Keys.CONTROL, "a")
    label.send_keys(Keys.BACKSPACE)  # clears the input; must not delete the box or the node
    label.send_keys("puppy")
    wait_for(lambda: boxes_value(driver, node)[0]["label"] == "puppy", message="renamed label in the STRING")
    assert len(boxes_value(driver, node)) == 2

    # resize box 2 by its bottom-right handle
    click_at(driver, *at(rect, 0.75, 0.5))
    wait_for(lambda: debug(driver, node)["selected"] == 1, message="box 2 selected")
    before = boxes_value(driver, node)[1]
    drag(driver, [at(rect, before["x2"], before["y2"]), at(rect, 0.88, 0.8), at(rect, 0.8, 0.7)])
    wait_for(lambda: boxes_value(driver, node)[1]["x2"] != before["x2"], message="the resized box in the STRING")
    after = boxes_value(driver, node)[1]
    assert (after["x1"], after["y1"], after["label"]) == (before["x1"], before["y1"], "cat")
    assert_near(after["x2"], 0.8, WIDTH, "x2")
    assert_near(after["y2"], 0.7, HEIGHT, "y2")
    assert_on_grid(after["x2"], WIDTH, "x2")
    assert_on_grid(after["y2"], HEIGHT, "y2")

    # a third box, deleted with the Delete key while the canvas has focus (the node stays)
    mouse_drag(driver, rect, (0.5, 0.02), (0.7, 0.1))
    wait_for(lambda: len(boxes_value(driver, node)) == 3, message="a third box")
    element(driver, node, "canvas.msp-layout-canvas").send_keys(Keys.DELETE)
    wait_for(lambda: len(boxes_value(driver, node)) == 2, message="Delete to remove the selected box")
    assert js(driver, "return !!app.graph.getNodeById(args[0]);", node)

    # order: box 2 earlier, then back later
    click_at(driver, *at(rect, 0.7, 0.5))
    wait_for(lambda: debug(driver, node)["selected"] == 1, message="box 2 selected again")
    element(driver, node, "button.msp-layout-up").click()
    wait_for(lambda: [b["label"] for b in boxes_value(driver, node)] == ["cat", "puppy"], message="cat moved first")
    element(driver, node, "button.msp-layout-down").click()
    wait_for(lambda: [b["label"] for b in boxes_value(driver, node)] == ["puppy", "cat"], message="cat moved back")

    expected = boxes_value(driver, node)
    text = debug(driver, node)["value"]
    assert [b["label"] for b in expected] == ["puppy", "cat"]
    shown = debug(driver, node)["rendered"]
    assert [{k: b[k] for k in ("x1", "y1", "x2", "y2", "label")} for b in shown] == expected
    # numbers are written rounded to 4 decimals
    assert all(round(b[k], 4) == b[k] for b in expected for k in ("x1", "y1", "x2", "y2"))

    # (1) workflow JSON -> reload the page -> load it back: the same boxes in the STRING and on the canvas
    workflow = js(driver, "return app.graph.serialize();")
    saved = next(n for n in workflow["nodes"] if n["id"] == node)
    assert json.loads(saved["widgets_values"][0]) == expected
    assert saved["widgets_values"][1:] == [WIDTH, HEIGHT, "custom"]
    driver.refresh()
    open_app(driver, comfy_server.url)
    js(driver, "await app.loadGraphData(args[0]); app.canvas.ds.scale = 1; app.canvas.ds.offset = [260, 110];"
               "app.canvas.setDirty(true, true);", workflow)
    rect = canvas_rect(driver, node)
    reloaded = debug(driver, node)
    assert reloaded["value"] == text
    assert json.loads(reloaded["value"]) == expected
    assert [{k: b[k] for k in ("x1", "y1", "x2", "y2", "label")} for b in reloaded["rendered"]] == expected
    assert reloaded["error"] is None

    # (2) the API prompt carries the STRING, and the backend receives exactly these boxes
    prompt = js(driver, "return (await app.graphToPrompt()).output;")
    assert prompt[str(node)]["class_type"] == "MSP_DrawLayoutBox"
    assert prompt[str(node)]["inputs"]["boxes"] == text
    assert "layout_canvas" not in prompt[str(node)]["inputs"]
    entry = queue_from_the_ui(driver, comfy_server)
    echoed = entry["outputs"][str(ids["echo"])]
    assert json.loads(echoed["layout"][0]) == expected
    assert echoed["size"] == [[WIDTH, HEIGHT]]

    # after the run: the IMAGE behind the boxes, and the layout the backend used
    state = wait_for(lambda: (d := debug(driver, node))["image"] and d, message="the IMAGE behind the boxes")
    assert state["image"] == [80, 96]
    assert state["runBoxes"] == expected
    assert state["value"] == text  # a run never rewrites the STRING
    ARTIFACTS.mkdir(exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / "layout_canvas.png"))
    assert not severe_logs(driver, EXTENSION_FILE)
    log.info("canvas end-to-end test took %.1f s", time.monotonic() - started)


def test_presets_programmatic_values_errors_and_paste(browser):
    driver = browser
    node = js(driver, NEW_GRAPH, WIDTH, HEIGHT, False)["box"]
    rect = canvas_rect(driver, node)
    labelled = '[{"x1": 0.1, "y1": 0.1, "x2": 0.3, "y2": 0.3, "label": "dog"}]'

    # a programmatic set of the STRING redraws the canvas
    js(driver, EDITOR + "boxesWidget.value = args[1];", node, labelled)
    wait_for(lambda: debug(driver, node)["rendered"] == [
        {"index": 0, "colour": "#e6194b", "x1": 0.1, "y1": 0.1, "x2": 0.3, "y2": 0.3, "label": "dog"}
    ], message="the canvas redrawn from a programmatic value")

    # the canvas' preset menu: preset boxes, labels kept, preset widget stays custom
    from selenium.webdriver.support.ui import Select

    Select(element(driver, node, "select.msp-layout-presets")).select_by_value("three in a row")
    wait_for(lambda: len(boxes_value(driver, node)) == 3, message="the preset in the STRING")
    assert boxes_value(driver, node) == [
        {"x1": 0.0, "y1": 0.25, "x2": 0.35, "y2": 0.75, "label": "dog"},
        {"x1": 0.35, "y1": 0.25, "x2": 0.65, "y2": 0.75, "label": ""},
        {"x1": 0.65, "y1": 0.25, "x2": 1.0, "y2": 0.75, "label": ""},
    ]
    assert js(driver, EDITOR + "return node.widgets.find((w) => w.name === 'preset').value;", node) == "custom"

    # the preset combo, changed the way the combo menu does: boxes written, combo back to custom
    combo = js(driver, EDITOR + """
        const preset = node.widgets.find((w) => w.name === 'preset');
        preset.setValue('subject + hat', {e: null, node, canvas: app.canvas});
        return preset.value;
    """, node)
    assert combo == "custom"
    assert [[b[k] for k in ("x1", "y1", "x2", "y2")] for b in boxes_value(driver, node)] == [
        [0.25, 0.25, 0.75, 0.75], [0.25, 0.0, 0.75, 0.25]]

    # copy / paste carries the boxes
    pasted = js(driver, EDITOR + """
        const before = new Set(app.graph.nodes.map((n) => n.id));
        app.canvas.copyToClipboard([node]);
        app.canvas.pasteFromClipboard({position: [0, 700]});
        const copy = app.graph.nodes.find((n) => !before.has(n.id));
        return copy.id;
    """, node)
    assert boxes_value(driver, pasted) == boxes_value(driver, node)
    wait_for(lambda: len(debug(driver, pasted)["rendered"]) == 2, message="the pasted node's canvas")

    # width/height changed through the widget: aspect ratio follows, fractions unchanged
    js(driver, EDITOR + "const w = node.widgets.find((x) => x.name === 'height'); w.value = 768; w.callback?.(768);", node)
    wait_for(lambda: (c := debug(driver, node)["canvasCss"]) and abs(c[0] / c[1] - WIDTH / 768) < 0.01, message="square canvas")
    js(driver, EDITOR + "node.widgets.find((x) => x.name === 'height').value = args[1];", node, HEIGHT)
    rect = canvas_rect(driver, node)

    # resizing the node resizes the canvas (same aspect ratio)
    width_before = debug(driver, node)["canvasCss"][0]
    js(driver, EDITOR + "node.setSize([node.size[0] + 200, node.size[1] + 200]); app.canvas.setDirty(true, true);", node)
    wait_for(lambda: (c := debug(driver, node)["canvasCss"])[0] > width_before + 100 and abs(c[0] / c[1] - WIDTH / HEIGHT) < 0.01,
             message="a bigger canvas after the node was resized")
    rect = canvas_rect(driver, node)

    # malformed JSON: an error on the canvas, the text untouched, drags ignored
    broken = '[{"x1": 0.1, "y1": 0.1, "x2": oops'
    js(driver, EDITOR + "boxesWidget.value = args[1];", node, broken)
    state = wait_for(lambda: (d := debug(driver, node))["error"] and d, message="the error state")
    assert state["rendered"] == [] and "JSON" in state["error"]
    mouse_drag(driver, rect, (0.1, 0.1), (0.5, 0.5))
    element(driver, node, "canvas.msp-layout-canvas").send_keys(Keys.DELETE)
    assert debug(driver, node)["value"] == broken
    assert js(driver, "return !!app.graph.getNodeById(args[0]);", node)
    prompt = js(driver, "return (await app.graphToPrompt()).output;")
    assert prompt[str(node)]["inputs"]["boxes"] == broken
    element(driver, node, "button.msp-layout-clear").click()  # the explicit way out
    wait_for(lambda: debug(driver, node)["value"] == "[]", message="Clear to replace the broken text")

    # a layout from the backend (e.g. derived from a MASK) is shown without touching the STRING
    js(driver, EDITOR + "boxesWidget.value = args[1];", node, labelled)
    run_layout = '[{"x1": 0.5, "y1": 0.5, "x2": 1.0, "y2": 1.0, "label": "dog"}]'
    js(driver, EDITOR + "node.onExecuted({msp_layout: [args[1]]});", node, run_layout)
    state = debug(driver, node)
    assert state["runBoxes"] == json.loads(run_layout)
    assert state["value"] == labelled

    # a workflow saved with a preset selected loads as that preset's drawn boxes, preset back to custom
    workflow = js(driver, "return app.graph.serialize();")
    saved = next(n for n in workflow["nodes"] if n["id"] == node)
    saved["widgets_values"][3] = "side by side"
    js(driver, "await app.loadGraphData(args[0]);", workflow)
    loaded = wait_for(lambda: (d := debug(driver, node))["value"] != labelled and d, message="the loaded preset")
    assert json.loads(loaded["value"]) == [
        {"x1": 0.0, "y1": 0.25, "x2": 0.5, "y2": 0.75, "label": "dog"},
        {"x1": 0.5, "y1": 0.25, "x2": 1.0, "y2": 0.75, "label": ""},
    ]
    assert js(driver, EDITOR + "return node.widgets.find((w) => w.name === 'preset').value;", node) == "custom"
    assert not severe_logs(driver, EXTENSION_FILE)


MASK_REGIONS = """
const [boxId, width, height, regions] = args;
const graph = app.graph;
const box = graph.getNodeById(boxId);
const add = (type, pos, values) => {
  const node = LiteGraph.createNode(type);
  node.pos = pos;
  graph.add(node);
  for (const [name, value] of Object.entries(values)) node.widgets.find((w) => w.name === name).value = value;
  return node;
};
let mask = add('SolidMask', [-420, 0], {value: 0, width, height});
regions.forEach(([x, y, w, h], i) => {
  const region = add('SolidMask', [-420, 140 + 140 * i], {value: 1, width: w, height: h});
  const composite = add('MaskComposite', [-210, 140 * i], {x, y, operation: 'add'});
  mask.connect(0, composite, 0);
  region.connect(0, composite, 1);
  mask = composite;
});
mask.connect(0, box, box.findInputSlot('mask'));
app.canvas.setDirty(true, true);
"""


def test_mask_regions_become_the_boxes_of_a_run(browser, comfy_server):
    """A real MASK (core mask nodes) wired into the node: the backend boxes its regions, the canvas shows them."""
    driver = browser
    ids = js(driver, NEW_GRAPH, WIDTH, HEIGHT, False)
    node = ids["box"]
    canvas_rect(driver, node)
    labelled = ('[{"x1": 0.1, "y1": 0.1, "x2": 0.3, "y2": 0.3, "label": "dog"},'
                ' {"x1": 0.5, "y1": 0.5, "x2": 0.9, "y2": 0.9, "label": "cat"}]')
    js(driver, EDITOR + "boxesWidget.value = args[1];", node, labelled)
    regions = [(448, 64, 256, 192), (64, 128, 192, 256)]  # x, y, w, h in pixels; the right one first
    js(driver, MASK_REGIONS, node, WIDTH, HEIGHT, regions)
    entry = queue_from_the_ui(driver, comfy_server)
    used = json.loads(entry["outputs"][str(ids["echo"])]["layout"][0])
    # regions left to right, labels from the drawn boxes, coordinates as fractions of the mask
    expected = [(64, 128, 192, 256, "dog"), (448, 64, 256, 192, "cat")]
    assert [b["label"] for b in used] == [label for *_, label in expected]
    for b, (x, y, w, h, _) in zip(used, expected):
        for got, want in ((b["x1"], x / WIDTH), (b["y1"], y / HEIGHT), (b["x2"], (x + w) / WIDTH), (b["y2"], (y + h) / HEIGHT)):
            assert got == pytest.approx(want, abs=1e-4)
    state = wait_for(lambda: (d := debug(driver, node))["runBoxes"] and d, message="the run's boxes on the canvas")
    assert state["runBoxes"] == used
    assert state["value"] == labelled  # the drawn boxes (and their labels) are kept
    assert not severe_logs(driver, EXTENSION_FILE)


def _canvas_module_constants(driver):
    # the URL the frontend loaded the extension from (its /extensions list), so the import returns that same module
    return js(driver, """
        const listed = await (await fetch('/extensions')).json();
        const module = await import(new URL(listed.find((e) => e.endsWith('/layout_box_canvas.js')), location.origin).href);
        return {presets: module.PRESETS, palette: module.PALETTE};
    """)


def test_canvas_presets_match_the_backend(browser):
    from msp_package import pack

    backend = {name: [list(box) for box in boxes] for name, boxes in pack("attention_patches.layout").PRESETS.items()}
    assert _canvas_module_constants(browser)["presets"] == backend


def test_canvas_palette_matches_route_preview(browser):
    from msp_package import pack

    backend = ["#%02x%02x%02x" % rgb for rgb in pack("attention_patches.route_preview").PALETTE]
    assert _canvas_module_constants(browser)["palette"] == backend
