"""Whether an Apply node's routes are previewed in the prompt being run.

Capturing routes during sampling is only worth its cost when a Router Mask Preview reads them.
Apply decides from the prompt it runs in. So that adding or removing a preview re-runs Apply
instead of reusing its cached output, an on-prompt handler writes the answer into the Apply
node's inputs as an undeclared key: ComfyUI includes every input key in a node's cache
signature but passes only declared inputs to the node.
"""

import logging
import sys

APPLY_NODE = "MSP_ApplyMultiSubjectAttention"
ROUTES_OUTPUT = 1  # Apply Multi-Subject Attention's second output
PREVIEWED_FLAG = "msp_routes_previewed"

log = logging.getLogger("comfyui_multisubject")


def previewed_nodes(prompt: dict) -> set[str]:
    """Ids of the nodes whose ROUTES output some node of ``prompt`` takes: one pass over all inputs."""
    found = set()
    for node in prompt.values():
        inputs = node.get("inputs") if isinstance(node, dict) else None
        if not isinstance(inputs, dict):
            continue
        for value in inputs.values():
            if (isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int))
                    and value[1] == ROUTES_OUTPUT):
                found.add(str(value[0]))
    return found


def routes_consumed(prompt: dict | None, node_id: str | None) -> bool:
    """True if any node of ``prompt`` takes ``node_id``'s ROUTES output."""
    if not isinstance(prompt, dict) or node_id is None:
        return False
    return str(node_id) in previewed_nodes(prompt)


def mark_previewed_routes(json_data: dict) -> dict:
    """On-prompt handler: flag each Apply node with whether its routes are previewed.

    It runs in the server's event loop for every queued prompt, so it costs one pass over the
    inputs however many Apply nodes there are.
    """
    prompt = json_data.get("prompt") if isinstance(json_data, dict) else None
    if isinstance(prompt, dict):
        previewed = None
        for node_id, node in prompt.items():
            if isinstance(node, dict) and node.get("class_type") == APPLY_NODE and isinstance(node.get("inputs"), dict):
                previewed = previewed_nodes(prompt) if previewed is None else previewed
                node["inputs"][PREVIEWED_FLAG] = str(node_id) in previewed
    return json_data


def register_prompt_handler(handler=mark_previewed_routes) -> None:
    """Hook ``handler`` into the running server, if there is one (not when the pack is imported by tests)."""
    server = getattr(getattr(sys.modules.get("server"), "PromptServer", None), "instance", None)
    if server is not None and handler not in getattr(server, "on_prompt_handlers", []):
        server.add_on_prompt_handler(handler)
        log.debug("on-prompt handler %s registered", handler.__name__)
