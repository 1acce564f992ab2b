"""Draw Layout Box: where each subject goes, as normalised boxes (the canvas edits the STRING)."""

from comfy_api.latest import io, ui

from ..attention_patches.layout import (
    CUSTOM_PRESET, PRESETS, Layout, LayoutBox, LayoutError, boxes_to_json, make_layout, mask_regions, parse_boxes,
    preset_boxes,
)
from .types import CATEGORY, SEARCHABLE, LayoutSocket

NODE_ID = "MSP_DrawLayoutBox"
NOT_CONNECTED = object()  # validate_inputs' mask when the MASK input has no link
DEFAULT_BOXES = boxes_to_json(preset_boxes("two subjects"))


class DrawLayoutBox(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=NODE_ID,
            display_name="Draw Layout Box",
            category=CATEGORY,
            **SEARCHABLE,
            description="One box per subject, in subject order. Coordinates are fractions of the image "
            "(x1, y1, x2, y2; origin top-left), so the layout fits any output size.",
            inputs=[
                io.String.Input(
                    "boxes", multiline=True, default=DEFAULT_BOXES,
                    tooltip='JSON list: [{"x1":0,"y1":0.25,"x2":0.5,"y2":0.75,"label":"dog"}, ...]; edited by the canvas',
                ),
                io.Int.Input("width", default=1024, min=64, max=16384, step=8, tooltip="the output width the boxes are drawn for"),
                io.Int.Input("height", default=1024, min=64, max=16384, step=8, tooltip="the output height the boxes are drawn for"),
                io.Combo.Input(
                    "preset", options=[CUSTOM_PRESET, *PRESETS], default=CUSTOM_PRESET,
                    tooltip="a layout from MS-Diffusion / MS-Bench instead of the drawn boxes",
                ),
                io.Image.Input("image", optional=True,
                               tooltip="a picture to draw the boxes over (shown behind them after a run, not used "
                               "otherwise): a Load Image of a sketch, a pose or an earlier result. Not this graph's "
                               "own decoded result: that wire makes a loop, which ComfyUI refuses"),
                io.Mask.Input("mask", optional=True, tooltip="each connected region (or batch entry) becomes a box"),
            ],
            outputs=[LayoutSocket.Output(display_name="layout")],
        )

    @classmethod
    def validate_inputs(cls, boxes: str, mask=NOT_CONNECTED) -> bool | str:
        """Queue-time check of the drawn boxes, shown once under 'boxes'.

        ComfyUI repeats a message under every argument it passes here, and passes ``mask`` only when
        it is connected (as None: its value comes later): then the MASK gives the boxes and the text
        only its labels, so any text passes. A preset is not read here (it would add a second copy of
        every message): with a preset the text must still parse, as the canvas always leaves it.
        """
        if not isinstance(boxes, str) or mask is not NOT_CONNECTED:
            return True  # a linked STRING: checked when run; a MASK: the text gives only labels
        try:
            parse_boxes(boxes)
        except LayoutError as e:
            return str(e)
        return True

    @classmethod
    def execute(cls, boxes: str, width: int, height: int, preset: str, image=None, mask=None) -> io.NodeOutput:
        try:
            if mask is not None:
                labels = [b.label for b in _labels_source(boxes)]
                derived = mask_regions(mask)
                layout = Layout(
                    tuple(LayoutBox(b.x1, b.y1, b.x2, b.y2, labels[i] if i < len(labels) else "") for i, (b, _) in enumerate(derived)),
                    width, height, tuple(region for _, region in derived),
                )
            else:
                layout = make_layout(boxes, width, height, preset)
        except LayoutError as e:
            raise LayoutError(f"Draw Layout Box: {e}") from None  # chained, the log would show the message twice
        shown = {"msp_layout": [layout.to_json()]}
        if image is not None:
            # not under "images": the canvas draws it behind the boxes, and the frontend would add
            # a second, full-size preview under the node (Nodes 2.0)
            shown["msp_image"] = ui.PreviewImage(image[:1], cls=cls).as_dict()["images"]
        return io.NodeOutput(layout, ui=shown)


def _labels_source(text: str) -> tuple[LayoutBox, ...]:
    """The drawn boxes, only for their labels (a MASK supplies the geometry)."""
    try:
        return parse_boxes(text)
    except LayoutError:
        return ()
