"""Whether an Apply node's routes are previewed in the prompt being run.

Capturing routes during sampling is only worth its cost when a Router Mask Preview reads them.
"""

ROUTES_OUTPUT = 1  # Apply Multi-Subject Attention's second output


def routes_consumed(prompt: dict | None, node_id: str | None) -> bool:
    """True if any node of ``prompt`` takes ``node_id``'s ROUTES output."""
    if not prompt or node_id is None:
        return False
    for node in prompt.values():
        for value in (node.get("inputs") or {}).values():
            if isinstance(value, list) and len(value) == 2 and str(value[0]) == str(node_id) and value[1] == ROUTES_OUTPUT:
                return True
    return False
