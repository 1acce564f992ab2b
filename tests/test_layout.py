"""The Draw Layout Box STRING format: parsing, validation (fuzzed), presets, masks, routes."""

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from msp_package import pack

layout_mod = pack("attention_patches.layout")
routing = pack("attention_patches.routing")
nodes = pack("nodes")
LayoutError = layout_mod.LayoutError


def test_canonical_and_short_forms():
    canonical = '[{"x1": 0, "y1": 0.25, "x2": 0.5, "y2": 0.75, "label": " dog "}, {"x1": 0.5, "y1": 0.25, "x2": 1, "y2": 0.75}]'
    boxes = layout_mod.parse_boxes(canonical)
    assert boxes == (layout_mod.LayoutBox(0, 0.25, 0.5, 0.75, "dog"), layout_mod.LayoutBox(0.5, 0.25, 1, 0.75, ""))
    assert layout_mod.parse_boxes("[[0, 0.25, 0.5, 0.75], [0.5, 0.25, 1, 0.75]]") == tuple(
        layout_mod.LayoutBox(b.x1, b.y1, b.x2, b.y2) for b in boxes)
    assert layout_mod.parse_boxes('{"boxes": [[0, 0, 1, 1]]}') == (layout_mod.LayoutBox(0, 0, 1, 1),)
    lay = layout_mod.make_layout(canonical, 1024, 768)
    assert layout_mod.parse_boxes(lay.to_json()) == boxes
    assert lay.tensor().shape == (2, 4) and lay.labels == ("dog", "")


@pytest.mark.parametrize("text, message", [
    ("", "no boxes"),
    ("[", "not valid JSON"),
    ("{}", "JSON list"),
    ("[]", "no boxes"),
    ("[[0, 0, 0, 0]]", "all zeros"),
    ("[[0.2, 0.2, 0.2, 0.5]]", "empty: x1 == x2"),
    ("[[0.6, 0.2, 0.4, 0.5]]", "x1 \\(0.6\\) > x2 \\(0.4\\)"),
    ("[[0, 0, 512, 512]]", "outside 0..1.*look like pixels"),
    ("[[-0.1, 0, 0.5, 0.5]]", "x1 = -0.1 is outside"),
    ('[{"x1": 0, "y1": 0, "x2": 1}]', "lacks y2"),
    ('[[0, 0, "a", 1]]', "x2 must be a finite number"),
    ("[[0, 0, NaN, 1]]", "finite number"),
    ("[[0, 0, true, 1]]", "finite number"),
    ('[{"x1": 0, "y1": 0, "x2": 1, "y2": 1, "label": 3}]', "label must be text"),
    ("[[0, 0, 1]]", "expected"),
    (json.dumps([[0, 0, 1, 1]] * 40), "at most 32"),
])
def test_bad_layouts_name_the_problem(text, message):
    with pytest.raises(LayoutError, match=message):
        layout_mod.parse_boxes(text)


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=True) | st.integers() | st.text(max_size=5),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.sampled_from(["x1", "y1", "x2", "y2", "label", "boxes", "z"]), children, max_size=6),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=80), json_values.map(json.dumps)))
def test_any_string_gives_a_layout_or_a_layout_error(text):
    try:
        boxes = layout_mod.parse_boxes(text)
    except LayoutError as e:
        assert str(e)
        return
    assert boxes and all(0 <= b.x1 < b.x2 <= 1 and 0 <= b.y1 < b.y2 <= 1 for b in boxes)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(*[st.floats(0, 1)] * 4), min_size=1, max_size=6))
def test_valid_boxes_round_trip(coords):
    boxes = [(min(a, c), min(b, d), max(a, c), max(b, d)) for a, b, c, d in coords]
    text = json.dumps([{"x1": x1, "y1": y1, "x2": x2, "y2": y2, "label": "s"} for x1, y1, x2, y2 in boxes])
    try:
        parsed = layout_mod.parse_boxes(text)
    except LayoutError as e:
        assert "empty" in str(e) or "all zeros" in str(e)
        return
    assert [(b.x1, b.y1, b.x2, b.y2) for b in parsed] == boxes
    assert layout_mod.parse_boxes(layout_mod.boxes_to_json(parsed)) == parsed


def test_presets_are_the_papers_layouts():
    assert layout_mod.PRESETS["two subjects"] == ((0.0, 0.25, 0.4, 0.75), (0.6, 0.25, 1.0, 0.75))
    for name in layout_mod.PRESETS:
        lay = nodes.DrawLayoutBox.execute(boxes="", width=1024, height=1024, preset=name).args[0]
        assert len(lay.boxes) == len(layout_mod.PRESETS[name])


def test_node_validates_at_queue_time_and_reports_the_node():
    assert nodes.DrawLayoutBox.validate_inputs(boxes="[[0, 0, 1, 1]]") is True
    assert "all zeros" in nodes.DrawLayoutBox.validate_inputs(boxes="[[0, 0, 0, 0]]")
    assert "no boxes" in nodes.DrawLayoutBox.validate_inputs(boxes="  ")
    # with a MASK connected (ComfyUI then passes mask=None: its value comes later) the text only gives labels
    assert nodes.DrawLayoutBox.validate_inputs(boxes="junk", mask=None) is True
    assert "no boxes" in nodes.DrawLayoutBox.validate_inputs(boxes="")
    with pytest.raises(LayoutError, match="^Draw Layout Box: .*empty"):
        nodes.DrawLayoutBox.execute(boxes="[[0.5, 0, 0.5, 1]]", width=512, height=512, preset="custom")


def test_mask_regions_and_batch_entries_become_boxes():
    mask = torch.zeros(1, 64, 128)
    mask[0, 16:48, 80:120] = 1  # right region first in memory, ordered left to right in the layout
    mask[0, 8:40, 8:40] = 1
    text = '[{"x1": 0, "y1": 0, "x2": 1, "y2": 1, "label": "dog"}, {"x1": 0, "y1": 0, "x2": 1, "y2": 1, "label": "cat"}]'
    lay = nodes.DrawLayoutBox.execute(boxes=text, width=1024, height=512, preset="custom", mask=mask).args[0]
    assert [(b.x1, b.y1, b.x2, b.y2, b.label) for b in lay.boxes] == [
        (8 / 128, 8 / 64, 40 / 128, 40 / 64, "dog"), (80 / 128, 16 / 64, 120 / 128, 48 / 64, "cat")]
    batch = torch.zeros(2, 10, 10)
    batch[0, 5:, 5:] = 1
    batch[1, :5, :5] = 1
    boxes = layout_mod.boxes_from_mask(batch)
    assert [(b.x1, b.y1) for b in boxes] == [(0.5, 0.5), (0.0, 0.0)]  # batch order kept
    with pytest.raises(LayoutError, match="MASK is empty"):
        layout_mod.boxes_from_mask(torch.zeros(1, 8, 8))


def test_box_routes_floor_and_ceil_at_any_aspect_ratio():
    routes = routing.box_routes(torch.tensor([[0.1, 0.3, 0.55, 0.8]]), 5, 7).view(5, 7)
    cols = range(math.floor(0.1 * 7), math.ceil(0.55 * 7))
    rows = range(math.floor(0.3 * 5), math.ceil(0.8 * 5))
    expected = torch.zeros(5, 7)
    for r in rows:
        for c in cols:
            expected[r, c] = 1
    assert torch.equal(routes, expected)


def test_feathered_routes_fall_off_outside_the_box_only():
    exact = routing.box_routes(torch.tensor([[0.25, 0.25, 0.75, 0.75]]), 16, 16)
    soft = routing.box_routes(torch.tensor([[0.25, 0.25, 0.75, 0.75]]), 16, 16, feather=2.0)
    assert torch.equal(soft[exact > 0], exact[exact > 0])
    ring = (soft > 0) & (soft < 1)
    assert ring.any() and not (exact[ring] > 0).any()
    assert soft.view(16, 16)[8, 3].item() == pytest.approx(0.5)  # one cell outside, feather 2


def test_route_masks_let_each_pixel_see_exactly_its_subjects_tokens():
    routes = routing.box_routes(torch.tensor([[0.0, 0.0, 0.6, 1.0], [0.4, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.2]]), 10, 10)
    routes[:, 99] = 0  # one pixel covered by nobody
    mask = routing.RouteMask(routes)
    assert mask.covering_sets() == {(0,), (1,), (0, 1), (0, 2), (1, 2), (0, 1, 2)}
    token_mask = mask.token_mask(4, torch.float32, torch.device("cpu"))
    assert token_mask.weights is None
    uncovered = routes.sum(0) == 0
    allowed = token_mask.bias == 0  # [N, 3 * 4]
    expected = (routes.T > 0).repeat_interleave(4, dim=1) | uncovered[:, None]
    assert torch.equal(allowed, expected)
    assert torch.equal(token_mask.coverage[:, 0], (~uncovered).float())  # uncovered pixels' outputs are zeroed
    everywhere = routing.RouteMask(torch.ones(2, 6)).token_mask(4, torch.float32, torch.device("cpu"))
    assert everywhere.bias is None and everywhere.coverage is None
