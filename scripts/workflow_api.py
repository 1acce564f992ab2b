"""Convert a ComfyUI UI-format workflow (what the frontend saves) into an API prompt.

The UI format stores each node's widget values as a positional list (``widgets_values``) and its
connections in a separate ``links`` table; the server's ``POST /prompt`` wants
``{node_id: {"class_type": ..., "inputs": {name: value or [source_id, slot]}}}``. The mapping
from positions to input names comes from the server's own node definitions (``/object_info``),
so it follows whatever node versions the server runs:

- widgets in the order of ``input_order`` (required, then optional), skipping socket-only types
  and ``forceInput`` inputs;
- the extra values the frontend stores beside some widgets: the ``control_after_generate`` value
  right after a seed (``"fixed"``, ``"randomize"``, ...) and the upload button's value (``"image"``)
  after the other widgets of an ``image_upload`` / ``video_upload`` / ``audio_upload`` node
  (LoadImageMask stores ``[image, channel, "image"]``);
- widgets converted to inputs (the link wins over the stored widget value);
- frontend-only nodes: ``Reroute`` (followed to its source), ``PrimitiveNode`` (its value is
  inlined into every widget it feeds), ``Note`` / ``MarkdownNote`` (dropped);
- muted nodes (mode 2) are dropped and bypassed nodes (mode 4) pass their matching input through,
  as the frontend does;
- unconnected optional sockets are left out; an unconnected *required* socket is left out as
  well, so the server reports it as the node's validation error.

Usage::

    python scripts/workflow_api.py example_workflows/two_subjects.json --server http://127.0.0.1:8188 -o prompt.json
    python scripts/workflow_api.py workflow.json --object-info object_info.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import urllib.request
from pathlib import Path
from typing import Any

log = logging.getLogger("workflow_api")

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
UPLOAD_OPTIONS = ("image_upload", "video_upload", "audio_upload", "animated_image_upload")
NOTE_TYPES = {"Note", "MarkdownNote"}
REROUTE = "Reroute"
PRIMITIVE = "PrimitiveNode"
MODE_MUTED = 2
MODE_BYPASSED = 4

VALUE, CONTROL, UPLOAD = "value", "control", "upload"


class WorkflowError(ValueError):
    """The workflow cannot be converted; the message names the node."""


def fetch_object_info(server_url: str, timeout: float = 60.0) -> dict:
    """The node definitions of a running ComfyUI server (``GET /object_info``)."""
    with urllib.request.urlopen(server_url.rstrip("/") + "/object_info", timeout=timeout) as response:
        return json.loads(response.read())


def _options(spec: list) -> dict:
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def is_widget(spec: list) -> bool:
    """Whether the frontend shows this input as a widget (and stores its value in widgets_values)."""
    kind = spec[0]
    if isinstance(kind, list):
        return True  # legacy combo: the options list itself
    return kind in WIDGET_TYPES and not _options(spec).get("forceInput")


def widget_slots(definition: dict) -> list[tuple[str, str]]:
    """(input name, VALUE | CONTROL | UPLOAD) for every entry of a node's widgets_values, in order."""
    inputs = definition.get("input", {})
    order = definition.get("input_order") or {section: list(inputs.get(section, {})) for section in ("required", "optional")}
    slots = []
    for section in ("required", "optional"):
        uploads = []
        for name in order.get(section, []):
            spec = inputs.get(section, {}).get(name)
            if not spec or not is_widget(spec):
                continue
            slots.append((name, VALUE))
            options = _options(spec)
            if options.get("control_after_generate"):
                slots.append((name, CONTROL))
            if any(options.get(key) for key in UPLOAD_OPTIONS):
                uploads.append((name, UPLOAD))
        slots += uploads  # the frontend adds the upload button as an extra input after the section's others
    return slots


def map_widget_values(definition: dict, values: Any, where: str) -> dict:
    """Input name -> value for one node's ``widgets_values``."""
    slots = widget_slots(definition)
    names = [name for name, kind in slots if kind == VALUE]
    if values is None:
        return {}
    if isinstance(values, dict):  # some packs store widgets by name
        return {name: values[name] for name in names if name in values}
    values = list(values)
    if len(values) == len(slots):
        return {name: value for (name, kind), value in zip(slots, values) if kind == VALUE}
    if len(values) == len(names):  # saved without the extra control/upload values
        return dict(zip(names, values))
    mapped, position = {}, 0
    for name, kind in slots:  # otherwise take an extra value only where it looks like one
        if position >= len(values):
            break
        value = values[position]
        if kind == CONTROL and not (isinstance(value, str) and value in CONTROL_VALUES):
            continue
        if kind == UPLOAD and not (value is None or value in ("image", "video", "audio", "")):
            continue
        if kind == VALUE:
            mapped[name] = value
        position += 1
    if position < len(values):
        log.warning("%s: %d widget value(s) left over (%s); the node definition may have changed",
                    where, len(values) - position, json.dumps(values[position:])[:200])
    missing = [name for name in names if name not in mapped]
    if missing:
        log.warning("%s: no stored value for %s; the server will use its defaults or report them", where, ", ".join(missing))
    return mapped


class _Workflow:
    def __init__(self, workflow: dict, object_info: dict):
        if workflow.get("definitions", {}).get("subgraphs"):
            raise WorkflowError("subgraphs are not supported by this converter: unpack them in the frontend first")
        if "nodes" not in workflow:
            raise WorkflowError("not a UI-format workflow (no 'nodes'); an API prompt can be submitted as it is")
        self.object_info = object_info
        self.nodes = {str(node["id"]): node for node in workflow["nodes"]}
        self.links = {}
        for link in workflow.get("links") or []:
            if isinstance(link, dict):
                link_id, origin, slot = link["id"], link["origin_id"], link["origin_slot"]
            else:
                link_id, origin, slot = link[0], link[1], link[2]
            self.links[link_id] = (str(origin), int(slot))

    def describe(self, node: dict) -> str:
        title = node.get("title")
        return f"node {node['id']} ({node['type']}{', ' + repr(title) if title else ''})"

    def source(self, link_id: int, where: str, seen: frozenset = frozenset()):
        """What a link delivers: ("link", [id, slot]), ("value", v) from a primitive, or None (muted/dangling)."""
        if link_id not in self.links:
            raise WorkflowError(f"{where}: link {link_id} is not in the workflow's links")
        origin_id, slot = self.links[link_id]
        if origin_id in seen:
            raise WorkflowError(f"{where}: the links loop through node {origin_id}")
        origin = self.nodes.get(origin_id)
        if origin is None:
            raise WorkflowError(f"{where}: link {link_id} comes from node {origin_id}, which is not in the workflow")
        kind = origin["type"]
        if kind == REROUTE or origin.get("mode") == MODE_BYPASSED:
            upstream = self._pass_through_input(origin, slot)
            if upstream is None or upstream.get("link") is None:
                return None
            return self.source(upstream["link"], where, seen | {origin_id})
        if origin.get("mode") == MODE_MUTED:
            return None
        if kind == PRIMITIVE:
            values = origin.get("widgets_values") or []
            if not values:
                raise WorkflowError(f"{where}: the primitive {self.describe(origin)} has no value")
            return ("value", values[0])
        if kind not in self.object_info:
            raise WorkflowError(f"{where}: its input comes from {self.describe(origin)}, a node type this server does not have")
        return ("link", [origin_id, slot])

    @staticmethod
    def _pass_through_input(node: dict, slot: int) -> dict | None:
        """The input a reroute or a bypassed node forwards to output ``slot``: same index and type first, else same type."""
        inputs = node.get("inputs") or []
        if node["type"] == REROUTE:
            return inputs[0] if inputs else None
        outputs = node.get("outputs") or []
        wanted = outputs[slot].get("type") if slot < len(outputs) else None
        if slot < len(inputs) and inputs[slot].get("type") == wanted:
            return inputs[slot]
        return next((i for i in inputs if i.get("type") == wanted and i.get("link") is not None), None)

    def convert(self) -> dict:
        prompt = {}
        for node_id, node in sorted(self.nodes.items(), key=lambda item: _sort_key(item[0])):
            kind = node["type"]
            if kind in NOTE_TYPES or kind in (REROUTE, PRIMITIVE) or node.get("mode") in (MODE_MUTED, MODE_BYPASSED):
                continue
            where = self.describe(node)
            definition = self.object_info.get(kind)
            if definition is None:
                raise WorkflowError(f"{where}: this server has no node type '{kind}' (is its custom-node pack installed?)")
            inputs = map_widget_values(definition, node.get("widgets_values"), where)
            for slot in node.get("inputs") or []:
                name = (slot.get("widget") or {}).get("name") or slot["name"]
                if slot.get("link") is None:
                    continue
                delivered = self.source(slot["link"], f"{where}, input '{name}'")
                if delivered is None:  # from a muted node or an unconnected reroute
                    continue
                inputs[name] = delivered[1]
            title = node.get("title") or definition.get("display_name") or kind
            prompt[node_id] = {"class_type": kind, "inputs": inputs, "_meta": {"title": title}}
        return prompt


def _sort_key(node_id: str):
    return (0, int(node_id), "") if node_id.isdigit() else (1, 0, node_id)


def link_origin(workflow: dict, link_id: int) -> str | None:
    """The id of the node a link really comes from, through reroutes and bypassed nodes (None: muted or dangling)."""
    every_type = {node["type"]: {} for node in workflow.get("nodes", [])}
    found = _Workflow(workflow, every_type).source(link_id, f"link {link_id}")
    return found[1][0] if found is not None and found[0] == "link" else None


def workflow_to_prompt(workflow: dict, object_info: dict) -> dict:
    """The API prompt ``{id: {class_type, inputs, _meta}}`` for a UI-format workflow."""
    return _Workflow(workflow, object_info).convert()


def load_workflow(path: str | Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Convert a UI-format ComfyUI workflow to an API prompt.")
    parser.add_argument("workflow", help="the workflow JSON saved by the frontend")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--server", default="http://127.0.0.1:8188", help="a running ComfyUI to read /object_info from")
    source.add_argument("--object-info", help="a saved /object_info JSON instead of a server")
    parser.add_argument("-o", "--output", help="write the prompt here (default: stdout)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    object_info = json.loads(Path(args.object_info).read_text()) if args.object_info else fetch_object_info(args.server)
    try:
        prompt = workflow_to_prompt(load_workflow(args.workflow), object_info)
    except WorkflowError as e:
        log.error("%s: %s", args.workflow, e)
        return 1
    text = json.dumps(prompt, indent=2)
    if args.output:
        Path(args.output).write_text(text + "\n", encoding="utf-8")
        log.info("wrote %s (%d nodes)", args.output, len(prompt))
    else:
        sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
