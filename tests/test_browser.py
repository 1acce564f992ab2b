"""The Draw Layout Box canvas in the real ComfyUI frontend, in headless Chromium, end to end.

Boxes are drawn with real mouse drags and a real keyboard; what counts is the hidden `boxes`
STRING (workflow JSON, API prompt) and what the backend received (MSPTest_LayoutEcho).
Every test runs in both node renderers: the LiteGraph canvas and Nodes 2.0 (Vue nodes).
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
WINDOW_BOTTOM = 820  # px of the page that stay in the window (browser_support.WINDOW, less the browser's own bars)
GRID = 8

pytestmark = requires_browser


RENDERERS = {"litegraph": False, "nodes2": True}  # name -> the frontend's Nodes 2.0 setting


@pytest.fixture(scope="module", params=list(RENDERERS))
def browser(request, comfy_server, tmp_path_factory):
    vue_nodes = RENDERERS[request.param]
    with browser_session(comfy_server, tmp_path_factory.mktemp("chromium-profile"), vue_nodes=vue_nodes) as driver:
        yield driver


@pytest.fixture
def renderer(browser):
    """The node renderer the page really uses ("litegraph" or "nodes2")."""
    return "nodes2" if js(browser, "return !!LiteGraph.vueNodesMode;") else "litegraph"


def screenshot(driver, name):
    ARTIFACTS.mkdir(exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


# ------------------------------------------------------------------ page helpers

# The view: zoom `scale`, the node's top-left at (260, top=110) px of the graph canvas, wherever the
# node is (Nodes 2.0 syncs its layout back to node.pos on a frame, and may scale a loaded layout).
SHOW_NODE = """
const frames = async (n) => { for (let i = 0; i < n; i++) await new Promise((r) => requestAnimationFrame(r)); };
const showNode = async (node, scale = 1, top = 110) => {
  await frames(2);
  app.canvas.ds.scale = scale;
  app.canvas.ds.offset = [260 / scale - node.pos[0], top / scale - node.pos[1]];
  app.canvas.setDirty(true, true);
  await frames(3);
};
"""

NEW_GRAPH = SHOW_NODE + """
const [width, height, withImage] = args;  // withImage: the file a LoadImage feeds to `image`, if any
const graph = app.graph;
graph.clear();
// Nodes 2.0 drops the old nodes' components on a frame; new nodes reusing their ids must come after
await frames(2);
const box = LiteGraph.createNode('MSP_DrawLayoutBox');
box.pos = [0, 0];
box.size = [520, 640];
graph.add(box);
// set without callbacks, as workflow loading does
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
  image.widgets.find((w) => w.name === 'image').value = withImage;
  image.connect(0, box, box.findInputSlot('image'));
}
// loaded as a workflow: Nodes 2.0 may place nodes added one by one off their node.pos
await app.loadGraphData(graph.serialize());
await showNode(app.graph.getNodeById(box.id));
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


def shift_drag(driver, rect, start, end, steps=6):
    """mouse_drag with Shift held (a new box even where boxes are)."""
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    (x0, y0), (x1, y1) = at(rect, *start), at(rect, *end)
    builder = ActionBuilder(driver, duration=15)
    keys, pointer = builder.key_action, builder.pointer_action
    keys.key_down(Keys.SHIFT)
    pointer.pause(0)
    for i in range(steps + 1):  # one pointer action per tick, the key held meanwhile
        pointer.move_to_location(round(x0 + (x1 - x0) * i / steps), round(y0 + (y1 - y0) * i / steps))
        keys.pause(0)
        if i == 0:
            pointer.pointer_down()
            keys.pause(0)
    pointer.pointer_up()
    keys.pause(0)
    pointer.pause(0)
    keys.key_up(Keys.SHIFT)
    builder.perform()


NODE_AND_EDITOR = EDITOR + """
const box = (r) => ({left: r.left, top: r.top, right: r.right, bottom: r.bottom, width: r.width, height: r.height});
let nodeRect;
if (LiteGraph.vueNodesMode) {
  nodeRect = box(document.querySelector(`.lg-node[data-node-id="${node.id}"]`).getBoundingClientRect());
} else {
  const c = app.canvas.canvas.getBoundingClientRect();
  const {scale, offset} = app.canvas.ds;
  const left = c.left + (node.pos[0] + offset[0]) * scale;
  const top = c.top + (node.pos[1] + offset[1]) * scale;
  nodeRect = {left, top, right: left + node.size[0] * scale, bottom: top + node.size[1] * scale,
              width: node.size[0] * scale, height: node.size[1] * scale};
}
const root = canvasWidget.element;
const controls = [...root.querySelectorAll('button, input, select, canvas, textarea, .msp-layout-list')]
  .filter((e) => e.offsetParent !== null)
  .map((e) => ({name: e.className || e.tagName, ...box(e.getBoundingClientRect())}));
return {node: nodeRect, editor: box(root.getBoundingClientRect()), controls};
"""


def layout_of(driver, node_id):
    """Where the node, its editor and each visible control of the editor are on screen."""
    return js(driver, NODE_AND_EDITOR, node_id)


def assert_editor_fits_node(driver, node_id, what):
    """Every control inside the editor, the editor inside the node, and no large empty band below it."""
    layout = layout_of(driver, node_id)
    node, editor = layout["node"], layout["editor"]
    assert editor["left"] >= node["left"] - 1 and editor["right"] <= node["right"] + 1, (what, node, editor)
    assert editor["bottom"] <= node["bottom"] + 1, (what, node, editor)
    assert node["bottom"] - editor["bottom"] < 40, f"{what}: {node['bottom'] - editor['bottom']:.0f} px of empty node below the editor"
    for control in layout["controls"]:
        assert editor["left"] - 1 <= control["left"] and control["right"] <= editor["right"] + 1, (what, control, editor)
        assert control["bottom"] <= editor["bottom"] + 1, (what, control, editor)
    return layout


def resize_node(driver, node_id, width, height):
    """Resize the node to width x height (graph units) the way the user does in each renderer."""
    if not js(driver, "return !!LiteGraph.vueNodesMode;"):
        js(driver, EDITOR + "node.setSize([args[1], args[2]]); app.canvas.setDirty(true, true);", node_id, width, height)
        return
    # Nodes 2.0 sizes nodes from its layout store: drag the node's bottom-right resize handle, at
    # zoom 1 (frontend 1.32.9 also moves the node when resizing at other zooms), with the handle
    # and its target in the window
    size = js(driver, EDITOR + "return [...node.size];", node_id)
    show_node(driver, node_id, top=min(110, WINDOW_BOTTOM - max(size[1], height)))
    handle = driver.execute_script(
        "return document.querySelector(`.lg-node[data-node-id='${arguments[0]}'] [aria-label='Resize from bottom-right corner']`)"
        ".getBoundingClientRect().toJSON();", node_id)
    x0, y0 = handle["left"] + handle["width"] / 2, handle["top"] + handle["height"] / 2
    x1, y1 = x0 + width - size[0], y0 + height - size[1]
    drag(driver, [(x0 + (x1 - x0) * i / 8, y0 + (y1 - y0) * i / 8) for i in range(9)])
    show_node(driver, node_id)


def show_node(driver, node_id, scale=1, top=110):
    """Zoom to `scale` with the node's top-left at a fixed place, once the page has drawn it."""
    js(driver, SHOW_NODE + "await showNode(app.graph.getNodeById(args[0]), args[1], args[2]);", node_id, scale, top)


def load_workflow(driver, workflow, node_id):
    """Load a workflow as the frontend does (file, paste, restore) and show the node."""
    js(driver, SHOW_NODE + "await app.loadGraphData(args[0]); await showNode(app.graph.getNodeById(args[1]));", workflow, node_id)


def choose_preset_in_combo(driver, node_id, name):
    """Pick `name` in the node's own `preset` combo as the user does (LiteGraph menu / Nodes 2.0 select)."""
    if not js(driver, "return !!LiteGraph.vueNodesMode;"):
        # what the LiteGraph combo menu does on a click
        js(driver, EDITOR + "node.widgets.find((w) => w.name === 'preset').setValue(args[1], {e: null, node, canvas: app.canvas});",
           node_id, name)
        return
    preset_select(driver, node_id).click()
    option = wait_for(lambda: driver.execute_script(
        "return [...document.querySelectorAll('[role=option]')].find((e) => e.textContent.trim() === arguments[0])", name),
        message=f"the option {name!r} in the preset select")
    option.click()


def preset_select(driver, node_id):
    """The Nodes 2.0 select of the node's `preset` widget."""
    return driver.execute_script(f"return document.querySelector(`.lg-node[data-node-id='{node_id}'] [aria-label=preset]`)")


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


def test_canvas_edits_reach_workflow_prompt_and_backend(browser, comfy_server, renderer):
    started = time.monotonic()
    driver = browser
    # the IMAGE differs per renderer: a run identical to an earlier one is cached and never reaches the node
    ids = js(driver, NEW_GRAPH, WIDTH, HEIGHT, {"litegraph": "dog.png", "nodes2": "cat.png"}[renderer])
    node = ids["box"]
    rect = canvas_rect(driver, node)
    # the default layout is shown, and the canvas widget is not part of the saved values
    assert len(debug(driver, node)["rendered"]) == 2
    assert js(driver, EDITOR + "return node.serialize().widgets_values.length;", node) == 4
    assert debug(driver, node)["boxesHidden"] is True
    assert_editor_fits_node(driver, node, "a new node")

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
    load_workflow(driver, workflow, node)
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
    # and no second preview of it under the node (the frontend's own, in either renderer)
    assert js(driver, EDITOR + """
        const shell = document.querySelector(`.lg-node[data-node-id="${node.id}"]`);
        return (node.imgs?.length ?? 0) + (shell ? shell.querySelectorAll('img').length : 0);
    """, node) == 0
    screenshot(driver, f"layout_canvas_{renderer}")
    assert not severe_logs(driver, EXTENSION_FILE)
    log.info("canvas end-to-end test took %.1f s", time.monotonic() - started)


def test_presets_json_view_sizes_errors_and_paste(browser, renderer):
    driver = browser
    node = js(driver, NEW_GRAPH, WIDTH, HEIGHT, None)["box"]
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

    # the node's own preset combo, changed as the user does: boxes written, the combo shows custom again, no stale note
    choose_preset_in_combo(driver, node, "subject + hat")
    wait_for(lambda: len(boxes_value(driver, node)) == 2, message="the combo's preset in the STRING")
    assert [[b[k] for k in ("x1", "y1", "x2", "y2")] for b in boxes_value(driver, node)] == [
        [0.25, 0.25, 0.75, 0.75], [0.25, 0.0, 0.75, 0.25]]
    assert js(driver, EDITOR + "return node.widgets.find((w) => w.name === 'preset').value;", node) == "custom"
    if renderer == "nodes2":  # it shows the value it was last told
        wait_for(lambda: preset_select(driver, node).text.strip() == "custom", message="the preset select showing custom again")
    assert not [n for n in debug(driver, node)["notes"] if "preset" in n]

    # copy / paste carries the boxes
    pasted = js(driver, EDITOR + """
        const before = new Set(app.graph.nodes.map((n) => n.id));
        app.canvas.copyToClipboard([node]);
        app.canvas.pasteFromClipboard({position: [1000, 0]});  // clear of the node and its resize handle
        const copy = app.graph.nodes.find((n) => !before.has(n.id));
        return copy.id;
    """, node)
    assert boxes_value(driver, pasted) == boxes_value(driver, node)
    wait_for(lambda: len(debug(driver, pasted)["rendered"]) == 2, message="the pasted node's canvas")

    # the JSON view: shown in the editor with the STRING, edited with the keyboard, hidden again
    element(driver, node, "button.msp-layout-json").click()
    text_view = element(driver, node, "textarea.msp-layout-json-text")
    wait_for(lambda: text_view.is_displayed() and text_view.size["height"] > 60, message="the JSON view")
    assert text_view.get_attribute("value") == debug(driver, node)["value"]
    assert_editor_fits_node(driver, node, "the JSON view shown")
    screenshot(driver, f"layout_json_view_{renderer}")
    typed = '[{"x1": 0.5, "y1": 0.5, "x2": 0.75, "y2": 1.0, "label": "typed"}]'
    text_view.click()
    text_view.send_keys(Keys.CONTROL, "a")
    text_view.send_keys(Keys.DELETE)
    text_view.send_keys(typed)
    wait_for(lambda: debug(driver, node)["value"] == typed, message="the typed JSON in the STRING")
    assert [b["label"] for b in debug(driver, node)["rendered"]] == ["typed"]
    assert js(driver, "return !!app.graph.getNodeById(args[0]);", node)  # Delete in the text kept the node
    element(driver, node, "button.msp-layout-json").click()
    wait_for(lambda: not text_view.is_displayed(), message="the JSON view hidden")

    # width/height changed through the widget: aspect ratio follows, fractions unchanged
    js(driver, EDITOR + "const w = node.widgets.find((x) => x.name === 'height'); w.value = 768; w.callback?.(768);", node)
    wait_for(lambda: (c := debug(driver, node)["canvasCss"]) and abs(c[0] / c[1] - WIDTH / 768) < 0.01, message="square canvas")
    js(driver, EDITOR + "node.widgets.find((x) => x.name === 'height').value = args[1];", node, HEIGHT)
    rect = canvas_rect(driver, node)

    # resizing the node resizes the editor and its canvas (same aspect ratio), in both directions
    before = js(driver, EDITOR + "return [...node.size];", node)
    width_before = debug(driver, node)["canvasCss"][0]
    resize_node(driver, node, before[0] + 240, before[1] + 200)
    wait_for(lambda: (c := debug(driver, node)["canvasCss"])[0] > width_before + 150 and abs(c[0] / c[1] - WIDTH / HEIGHT) < 0.01,
             message="a bigger canvas after the node was resized")
    assert_editor_fits_node(driver, node, "a big node")
    screenshot(driver, f"layout_big_node_{renderer}")
    resize_node(driver, node, 260, before[1])
    wait_for(lambda: debug(driver, node)["canvasCss"][0] <= 240, message="a smaller canvas in a narrow node")
    assert_editor_fits_node(driver, node, "a narrow node")
    screenshot(driver, f"layout_narrow_node_{renderer}")
    resize_node(driver, node, *before)
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


def test_a_box_can_be_added_when_boxes_cover_the_canvas(browser, renderer):
    """'subject + scene' leaves no empty space: Shift+drag and '+ box' still add boxes, and they can be edited."""
    from selenium.webdriver.support.ui import Select

    driver = browser
    node = js(driver, NEW_GRAPH, WIDTH, HEIGHT, None)["box"]
    rect = canvas_rect(driver, node)
    Select(element(driver, node, "select.msp-layout-presets")).select_by_value("subject + scene")
    wait_for(lambda: len(boxes_value(driver, node)) == 2, message="the subject + scene preset")
    assert any("Shift+drag" in n for n in debug(driver, node)["notes"])  # the way out is shown

    # a plain drag inside the boxes moves one of them; Shift+drag draws a new box there instead
    shift_drag(driver, rect, (0.06, 0.1), (0.2, 0.4))
    wait_for(lambda: len(boxes_value(driver, node)) == 3, message="a box drawn by Shift+drag over the scene box")
    drawn = boxes_value(driver, node)[2]
    for key, expected, size in (("x1", 0.06, WIDTH), ("y1", 0.1, HEIGHT), ("x2", 0.2, WIDTH), ("y2", 0.4, HEIGHT)):
        assert_near(drawn[key], expected, size, key)
    assert boxes_value(driver, node)[:2] == [
        {"x1": 0.25, "y1": 0.25, "x2": 0.75, "y2": 0.75, "label": ""}, {"x1": 0.0, "y1": 0.0, "x2": 1.0, "y2": 1.0, "label": ""}]
    assert debug(driver, node)["selected"] == 2

    # the '+ box' control adds a visible, selected box that a drag then moves
    element(driver, node, "button.msp-layout-add").click()
    wait_for(lambda: len(boxes_value(driver, node)) == 4, message="a box added by + box")
    added = boxes_value(driver, node)[3]
    assert debug(driver, node)["selected"] == 3
    assert all((b["x1"], b["y1"]) != (added["x1"], added["y1"]) for b in boxes_value(driver, node)[:3])
    middle = ((added["x1"] + added["x2"]) / 2, (added["y1"] + added["y2"]) / 2)
    mouse_drag(driver, rect, middle, (middle[0] + 0.1, middle[1] + 0.1))
    wait_for(lambda: boxes_value(driver, node)[3]["x1"] > added["x1"] + 0.05, message="the added box moved by a drag")
    assert len(boxes_value(driver, node)) == 4
    screenshot(driver, f"layout_added_boxes_{renderer}")
    assert not severe_logs(driver, EXTENSION_FILE)


LONG_LABEL = 100_000
MAX_LABEL = 200  # attention_patches/layout.py MAX_LABEL_LENGTH


def test_hostile_workflow_labels_are_capped_and_the_tab_stays_responsive(browser, renderer):
    """A workflow with a 100k-character label (once a frozen tab) loads fast, capped as the backend caps it."""
    driver = browser
    node = js(driver, NEW_GRAPH, WIDTH, HEIGHT, None)["box"]
    canvas_rect(driver, node)
    workflow = js(driver, "return app.graph.serialize();")
    labels = ["\ud800" + "W" * LONG_LABEL, " " * 300 + "cat"]  # a lone surrogate first; padding the backend strips
    saved = next(n for n in workflow["nodes"] if n["id"] == node)
    saved["widgets_values"][0] = json.dumps([
        {"x1": 0.05, "y1": 0.1, "x2": 0.6, "y2": 0.5, "label": labels[0]},
        {"x1": 0.5, "y1": 0.5, "x2": 0.9, "y2": 0.9, "label": labels[1]},
    ])
    saved["widgets_values"][3] = "constructor"  # no preset, whatever Object.prototype has
    started = time.monotonic()
    load_workflow(driver, workflow, node)
    assert time.monotonic() - started < 10, "loading the workflow took too long"
    # the tab keeps drawing frames
    for _ in range(3):
        started = time.monotonic()
        js(driver, "await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));")
        assert time.monotonic() - started < 2, "the tab stopped drawing frames"

    # capped in the STRING (what the workflow and the prompt carry) as the backend caps: strip, then 200 code points
    state = wait_for(lambda: (d := debug(driver, node))["rendered"] and d, message="the loaded boxes on the canvas")
    stored = json.loads(state["value"])
    assert [b["label"] for b in stored] == [label.strip()[:MAX_LABEL] for label in labels]
    assert [b["label"] for b in state["rendered"]] == [label.strip()[:MAX_LABEL] for label in labels]
    assert len(state["value"]) < 2000
    assert state["error"] is None
    assert "'constructor' is no preset: choose custom or a preset" in state["notes"]
    assert_editor_fits_node(driver, node, "long labels")
    workflow = js(driver, "return app.graph.serialize();")
    assert json.loads(next(n for n in workflow["nodes"] if n["id"] == node)["widgets_values"][0]) == stored

    # an edit in the JSON view is capped too; the label field cannot take more than the cap
    element(driver, node, "button.msp-layout-json").click()
    js(driver, EDITOR + """
        const view = canvasWidget.element.querySelector('textarea.msp-layout-json-text');
        view.value = JSON.stringify([{x1: 0.1, y1: 0.1, x2: 0.5, y2: 0.5, label: 'x'.repeat(args[1])}]);
        view.dispatchEvent(new Event('input', {bubbles: true}));
    """, node, LONG_LABEL)
    wait_for(lambda: json.loads(debug(driver, node)["value"])[0]["label"] == "x" * MAX_LABEL, message="the edited label capped")
    assert element(driver, node, "input.msp-layout-label").get_attribute("maxlength") == str(MAX_LABEL)
    element(driver, node, "button.msp-layout-json").click()

    # drawing shortens any text with bounded work: a million characters fit in a 100 px tag at once
    timing = js(driver, """
        const listed = await (await fetch('/extensions')).json();
        const url = listed.find((e) => e.endsWith('/layout_drawing.js'));
        const {fitText} = await import(new URL(url, location.origin).href);
        const ctx = document.createElement('canvas').getContext('2d');
        ctx.font = 'bold 12px sans-serif';
        const text = 'W'.repeat(1000000);
        const started = performance.now();
        const shown = fitText(ctx, text, 100);
        return {ms: performance.now() - started, width: ctx.measureText(shown).width, length: shown.length};
    """)
    assert timing["ms"] < 500 and timing["width"] <= 100 and 2 < timing["length"] < 100, timing
    screenshot(driver, f"layout_long_labels_{renderer}")
    assert not severe_logs(driver, EXTENSION_FILE)
    assert not severe_logs(driver, "layout_")


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


def test_mask_regions_become_the_boxes_of_a_run(browser, comfy_server, renderer):
    """A real MASK (core mask nodes) wired into the node: the backend boxes its regions, the canvas shows them."""
    driver = browser
    ids = js(driver, NEW_GRAPH, WIDTH, HEIGHT, None)
    node = ids["box"]
    canvas_rect(driver, node)
    labelled = ('[{"x1": 0.1, "y1": 0.1, "x2": 0.3, "y2": 0.3, "label": "dog"},'
                ' {"x1": 0.5, "y1": 0.5, "x2": 0.9, "y2": 0.9, "label": "cat"}]')
    js(driver, EDITOR + "boxesWidget.value = args[1];", node, labelled)
    # x, y, w, h in pixels; the right one first; moved per renderer (a run identical to an earlier one is cached)
    shift = {"litegraph": 0, "nodes2": GRID}[renderer]
    regions = [(448, 64 + shift, 256, 192), (64, 128 + shift, 192, 256)]
    js(driver, MASK_REGIONS, node, WIDTH, HEIGHT, regions)
    entry = queue_from_the_ui(driver, comfy_server)
    used = json.loads(entry["outputs"][str(ids["echo"])]["layout"][0])
    # regions left to right, labels from the drawn boxes, coordinates as fractions of the mask
    expected = [(*regions[1], "dog"), (*regions[0], "cat")]
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
    from devkit.pack import pack

    backend = {name: [list(box) for box in boxes] for name, boxes in pack("attention_patches.layout").PRESETS.items()}
    assert _canvas_module_constants(browser)["presets"] == backend


def test_canvas_palette_matches_route_preview(browser):
    from devkit.pack import pack

    backend = ["#%02x%02x%02x" % rgb for rgb in pack("attention_patches.route_preview").PALETTE]
    assert _canvas_module_constants(browser)["palette"] == backend


# ------------------------------------------------------------------ undo / redo

ADD_LATENT = SHOW_NODE + """
const latent = LiteGraph.createNode('EmptyLatentImage');
latent.pos = [560, 200];
app.graph.add(latent);
await app.loadGraphData(app.graph.serialize());  // a fresh workflow: its undo history starts here
await showNode(app.graph.getNodeById(args[0]));
return latent.id;
"""

VISIBLE_EDITOR = EDITOR + """
// the editor canvas the artist sees and drags: in Nodes 2.0 the one inside the node's shell; on the
// LiteGraph canvas the DOM widget overlay's; and whether it is the node's own editor
const shell = document.querySelector(`.lg-node[data-node-id="${node.id}"]`);
const seen = LiteGraph.vueNodesMode
  ? shell?.querySelector('canvas.msp-layout-canvas')
  : [...document.querySelectorAll('canvas.msp-layout-canvas')].find((c) => c.isConnected && c.offsetParent !== null);
const own = canvasWidget.element.querySelector('canvas.msp-layout-canvas');
const r = seen?.getBoundingClientRect();
return {own: seen === own, connected: own.isConnected,
        rect: r && {left: r.left, top: r.top, width: r.width, height: r.height}};
"""


def press(driver, *keys):
    """A real key chord (e.g. Ctrl+Z) sent to whatever has the focus."""
    from selenium.webdriver.common.action_chains import ActionChains

    chain = ActionChains(driver)
    for key in keys[:-1]:
        chain.key_down(key)
    chain.send_keys(keys[-1])
    for key in reversed(keys[:-1]):
        chain.key_up(key)
    chain.perform()


# The change tracker records a state when an edit ends (our commit, a mouseup, a keyup). A change the
# frontend makes to the graph on its own, a frame later (layout after a reload under load), is then
# recorded at the next key: as its own undo step on top of the edit, so Ctrl+Z would undo it instead
# of the edit. Before each chord the graph is settled: a pending change that leaves the layout node's
# boxes alone is folded into the recorded state (and logged); a pending change of the boxes is an
# edit the node failed to record, and fails the test.
SETTLE_TRACKER = """
const [nodeId] = args;
const tracker = app.extensionManager.workflow.activeWorkflow.changeTracker;
for (let i = 0; i < 2; i++) await new Promise((r) => requestAnimationFrame(r));
const current = JSON.parse(JSON.stringify(app.graph.serialize()));
if (tracker.constructor.graphEqual(tracker.activeState, current)) return {pending: false};
// widgets_values[i] is widget i's value (LGraphNode.serialize)
const index = app.graph.getNodeById(nodeId).widgets.findIndex((w) => w.name === 'boxes');
const boxes = (state) => state.nodes.find((n) => String(n.id) === String(nodeId))?.widgets_values?.[index];
if (boxes(tracker.activeState) !== boxes(current)) {
  return {pending: true, boxes: true, recorded: boxes(tracker.activeState), current: boxes(current)};
}
const changed = current.nodes.filter((n) => {
  const before = tracker.activeState.nodes.find((m) => m.id === n.id);
  return JSON.stringify(before) !== JSON.stringify(n);
}).map((n) => n.id);
tracker.activeState = current;
return {pending: true, boxes: false, nodes: changed};
"""


def undo_redo(driver, node_id, key):
    """Ctrl+``key`` (z or y) as the artist presses it, once the graph is settled (see SETTLE_TRACKER)."""
    settled = js(driver, SETTLE_TRACKER, node_id)
    assert not settled.get("boxes"), f"a box edit the change tracker did not record: {settled}"
    if settled["pending"]:
        log.warning("folded a change the frontend made on its own into the recorded state: nodes %s", settled["nodes"])
    press(driver, Keys.CONTROL, key)


def visible_canvas(driver, node_id):
    """The rect of the editor canvas on screen, once laid out (see VISIBLE_EDITOR)."""
    return wait_for(lambda: (v := js(driver, VISIBLE_EDITOR, node_id))["rect"] and v["rect"]["width"] > 100 and v,
                    message="the visible layout canvas")


def assert_run_sends_what_the_canvas_shows(driver, node_id, expected):
    """The API prompt the Run button builds carries the STRING, which is what the node's canvas draws."""
    state = debug(driver, node_id)
    prompt = js(driver, "return (await app.graphToPrompt()).output;")
    sent = json.loads(prompt[str(node_id)]["inputs"]["boxes"])
    shown = [{k: b[k] for k in ("x1", "y1", "x2", "y2", "label")} for b in state["rendered"]]
    assert sent == shown == expected, {"sent": sent, "shown": shown, "expected": expected}


def drag_box_by(driver, node_id, index, dx, dy):
    """Drag box `index` on the canvas the artist sees by (dx, dy) image fractions; its expected new value."""
    seen = visible_canvas(driver, node_id)
    box = boxes_value(driver, node_id)[index]
    middle = ((box["x1"] + box["x2"]) / 2, (box["y1"] + box["y2"]) / 2)
    mouse_drag(driver, seen["rect"], middle, (middle[0] + dx, middle[1] + dy))
    return seen


def test_box_edits_after_undo_and_redo_reach_what_run_sends(browser, renderer):
    """Edit, Ctrl+Z (also of an unrelated change), Ctrl+Y, edit again: the STRING, the canvas and the prompt agree."""
    driver = browser
    node = js(driver, NEW_GRAPH, WIDTH, HEIGHT, None)["box"]
    latent = js(driver, ADD_LATENT, node)
    canvas_rect(driver, node)
    js(driver, EDITOR + "boxesWidget.value = args[1];", node, json.dumps([
        {"x1": 0.0625, "y1": 0.125, "x2": 0.375, "y2": 0.75, "label": "dog"},
        {"x1": 0.5625, "y1": 0.125, "x2": 0.875, "y2": 0.75, "label": "cat"}]))
    js(driver, "app.extensionManager.workflow.activeWorkflow.changeTracker.checkState();")
    width_of_latent = "return app.graph.getNodeById(args[0]).widgets.find((w) => w.name === 'width').value;"

    # move the dog, then an unrelated change (Empty Latent's width), then Ctrl+Z: only the width goes back
    drag_box_by(driver, node, 0, 0.0625, 0.125)
    wait_for(lambda: boxes_value(driver, node)[0]["x1"] > 0.1, message="the moved dog in the STRING")
    moved = boxes_value(driver, node)
    js(driver, """
        const w = app.graph.getNodeById(args[0]).widgets.find((x) => x.name === 'width');
        w.value = 640; w.callback?.(640);
        app.extensionManager.workflow.activeWorkflow.changeTracker.checkState();
    """, latent)
    undo_redo(driver, node, "z")
    wait_for(lambda: js(driver, width_of_latent, latent) == 512, message="Ctrl+Z to undo the width change")
    assert boxes_value(driver, node) == moved
    assert_run_sends_what_the_canvas_shows(driver, node, moved)

    # after that undo, the canvas on screen is the node's own, and an edit on it is what Run sends
    seen = drag_box_by(driver, node, 1, -0.0625, 0.125)
    assert seen["own"] and seen["connected"], f"{renderer}: after Ctrl+Z the visible canvas is not the node's editor: {seen}"
    wait_for(lambda: boxes_value(driver, node)[1]["y1"] > 0.2, message="the moved cat in the STRING after Ctrl+Z")
    cat_moved = boxes_value(driver, node)
    assert cat_moved[0] == moved[0]
    assert_run_sends_what_the_canvas_shows(driver, node, cat_moved)

    # Ctrl+Z undoes that move, Ctrl+Y redoes it, and the canvas follows both
    undo_redo(driver, node, "z")
    wait_for(lambda: boxes_value(driver, node) == moved, message="Ctrl+Z to undo the cat's move")
    assert_run_sends_what_the_canvas_shows(driver, node, moved)
    undo_redo(driver, node, "y")
    wait_for(lambda: boxes_value(driver, node) == cat_moved, message="Ctrl+Y to redo the cat's move")
    assert_run_sends_what_the_canvas_shows(driver, node, cat_moved)

    # one more edit after the redo, on the canvas the artist sees
    seen = drag_box_by(driver, node, 0, 0.125, 0.0)
    assert seen["own"] and seen["connected"], f"{renderer}: after Ctrl+Y the visible canvas is not the node's editor: {seen}"
    wait_for(lambda: boxes_value(driver, node)[0]["x1"] > moved[0]["x1"] + 0.1, message="the dog moved after Ctrl+Y")
    final = boxes_value(driver, node)
    assert final[1] == cat_moved[1]
    assert_run_sends_what_the_canvas_shows(driver, node, final)
    assert not severe_logs(driver, EXTENSION_FILE)


def test_a_typed_label_is_one_undo_step(browser, renderer):
    driver = browser
    node = js(driver, NEW_GRAPH, WIDTH, HEIGHT, None)["box"]
    rect = canvas_rect(driver, node)
    js(driver, EDITOR + "boxesWidget.value = args[1];", node, json.dumps([
        {"x1": 0.0625, "y1": 0.125, "x2": 0.375, "y2": 0.75, "label": "dog"},
        {"x1": 0.5625, "y1": 0.125, "x2": 0.875, "y2": 0.75, "label": "cat"}]))
    js(driver, "app.extensionManager.workflow.activeWorkflow.changeTracker.checkState();")
    before = boxes_value(driver, node)
    click_at(driver, *at(rect, 0.2, 0.4))
    wait_for(lambda: debug(driver, node)["selected"] == 0, message="box 1 selected by a click")
    label = element(driver, node, "input.msp-layout-label")
    label.click()
    label.send_keys(Keys.CONTROL, "a")
    label.send_keys("puppy")
    wait_for(lambda: boxes_value(driver, node)[0]["label"] == "puppy", message="the typed label in the STRING")
    typed = boxes_value(driver, node)
    click_at(driver, *at(rect, 0.45, 0.9))  # done typing: a click on the canvas, then the graph's undo
    undo_redo(driver, node, "z")
    wait_for(lambda: boxes_value(driver, node)[0]["label"] != "puppy", message="Ctrl+Z after typing a label")
    assert boxes_value(driver, node) == before, "one Ctrl+Z undoes the whole label, not one character"
    undo_redo(driver, node, "y")
    wait_for(lambda: boxes_value(driver, node) == typed, message="Ctrl+Y to bring the label back")
    assert_run_sends_what_the_canvas_shows(driver, node, typed)


def test_the_json_view_keeps_the_node_inside_its_group(browser, renderer):
    driver = browser
    node = js(driver, NEW_GRAPH, WIDTH, HEIGHT, None)["box"]
    workflow = js(driver, "return app.graph.serialize();")
    saved = next(n for n in workflow["nodes"] if n["id"] == node)
    saved["size"] = [560, 520]  # as in the examples, in a group just around it
    workflow["groups"] = [{"id": 1, "title": "Layout", "bounding": [-10, -72, 580, 602], "color": "#3f789e", "font_size": 24, "flags": {}}]
    load_workflow(driver, workflow, node)
    canvas_rect(driver, node)
    size = js(driver, EDITOR + "return [...node.size];", node)
    canvas_before = debug(driver, node)["canvasCss"]
    inside_group = EDITOR + """
        const g = app.graph.groups[0].boundingRect;
        const [x, y, w, h] = node.boundingRect;
        return x >= g[0] && y >= g[1] && x + w <= g[0] + g[2] && y + h <= g[1] + g[3];
    """
    assert js(driver, inside_group, node)

    element(driver, node, "button.msp-layout-json").click()
    text_view = element(driver, node, "textarea.msp-layout-json-text")
    wait_for(lambda: text_view.is_displayed() and text_view.size["height"] > 90, message="the JSON view")
    show_node(driver, node)
    assert js(driver, EDITOR + "return [...node.size];", node) == size, "opening the JSON view resized the node"
    assert js(driver, inside_group, node), "opening the JSON view grew the node out of its group"
    assert_editor_fits_node(driver, node, "the JSON view in a node of the examples' size")
    canvas_with_json = debug(driver, node)["canvasCss"]
    assert 40 <= canvas_with_json[1] < canvas_before[1]  # the canvas gives the JSON view its room
    element(driver, node, "button.msp-layout-json").click()
    wait_for(lambda: not text_view.is_displayed(), message="the JSON view hidden")
    wait_for(lambda: debug(driver, node)["canvasCss"] == canvas_before, message="the canvas back to its size")
    assert js(driver, EDITOR + "return [...node.size];", node) == size


def test_a_pasted_node_over_the_original_never_covers_the_original_in_front(browser, renderer):
    """Paste a copy overlapping the node, bring the original to the front: its label row is its own to click and type in."""
    driver = browser
    node = js(driver, NEW_GRAPH, WIDTH, HEIGHT, None)["box"]
    rect = canvas_rect(driver, node)
    click_at(driver, *at(rect, 0.2, 0.4))
    wait_for(lambda: debug(driver, node)["selected"] == 0, message="box 1 selected by a click")
    label_row = js(driver, EDITOR + """
        const r = canvasWidget.element.querySelector('input.msp-layout-label').getBoundingClientRect();
        return {x: r.left + r.width / 2, y: r.top + r.height / 2};
    """, node)
    # the copy's top edge a little above the original's label row (graph units = CSS px at zoom 1)
    copy = js(driver, EDITOR + """
        const before = new Set(app.graph.nodes.map((n) => n.id));
        app.canvas.copyToClipboard([node]);
        const top = (args[1] - app.canvas.canvas.getBoundingClientRect().top) / app.canvas.ds.scale - app.canvas.ds.offset[1] - 40;
        app.canvas.pasteFromClipboard({position: [node.pos[0] + 60, top]});
        return app.graph.nodes.find((n) => !before.has(n.id)).id;
    """, node, label_row["y"])
    wait_for(lambda: len(debug(driver, copy)["rendered"]) == 2, message="the pasted node's canvas")
    # a click on the original's title selects it: it is in front (the copy was, being pasted last)
    title = js(driver, NODE_AND_EDITOR, node)["node"]
    click_at(driver, title["left"] + 60, title["top"] + (12 if renderer == "nodes2" else -15))
    wait_for(lambda: js(driver, "return Object.keys(app.canvas.selected_nodes ?? {}).map(Number);") == [node],
             message="the original selected")
    js(driver, "await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));")
    hit = js(driver, EDITOR + """
        const e = document.elementFromPoint(args[1], args[2]);
        return {own: canvasWidget.element.contains(e), what: e && (e.className || e.tagName)};
    """, node, label_row["x"], label_row["y"])
    screenshot(driver, f"layout_pasted_overlap_{renderer}")
    assert hit["own"], f"{renderer}: the original's label row is covered by {hit}"
    click_at(driver, label_row["x"], label_row["y"])
    driver.switch_to.active_element.send_keys("x")
    wait_for(lambda: boxes_value(driver, node)[0]["label"].endswith("x"), message="typing into the original's label")
    assert not boxes_value(driver, copy)[0]["label"].endswith("x")


# ------------------------------------------------------------------ notes

NOTE_GRAPH = SHOW_NODE + """
app.graph.clear();
await frames(2);
const note = LiteGraph.createNode('MarkdownNote');
note.pos = [0, 0];
note.size = [420, 200];
note.color = '#432';  // the examples' note colours
note.bgcolor = '#653';
note.widgets[0].value = args[0];
app.graph.add(note);
await app.loadGraphData(app.graph.serialize());
await showNode(app.graph.getNodeById(note.id), 1.5);
return note.id;
"""


def relative_luminance(rgb) -> float:
    def channel(c):
        c = c / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(c) for c in rgb[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast_ratio(a, b) -> float:
    high, low = sorted((relative_luminance(a), relative_luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def test_model_file_names_in_notes_are_readable(browser, renderer):
    """The examples' notes name model files as inline code: text and chip keep a contrast of at least 4.5 (WCAG AA)."""
    import io

    from PIL import Image

    driver = browser
    js(driver, NOTE_GRAPH, "Put `ms_adapter_sdxl.safetensors` in `models/msdiffusion/`.")
    rect = wait_for(lambda: js(driver, """
        const code = [...document.querySelectorAll('.widget-markdown code, .comfy-markdown code')].find((c) => c.offsetParent);
        const r = code?.getBoundingClientRect();
        return r && r.width > 20 ? {left: r.left, top: r.top, right: r.right, bottom: r.bottom} : null;
    """), message="the note's inline code on screen")
    js(driver, "await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));")
    shot = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    chip = shot.crop((round(rect["left"]) + 1, round(rect["top"]) + 1, round(rect["right"]) - 1, round(rect["bottom"]) - 1))
    pixels = list(chip.getdata())
    background = max(set(pixels), key=pixels.count)  # the chip: the most common colour in its box
    text = max(pixels, key=lambda p: abs(relative_luminance(p) - relative_luminance(background)))
    ratio = contrast_ratio(text, background)
    screenshot(driver, f"note_code_{renderer}")
    assert ratio >= 4.5, f"{renderer}: inline code {text} on {background}: contrast {ratio:.2f} < 4.5"
