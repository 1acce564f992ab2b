"""The pack's one line to ComfyUI's server: text shown under a running node.

ComfyUI loads the extension (``comfy_entrypoint``) after it has started its server, so the
server is connected there; where the pack runs without one (in-process uses, scripts) the
text is only logged by the caller.
"""

from __future__ import annotations

import logging

log = logging.getLogger("comfyui_multisubject")


class Notifier:
    """Sends progress text to the client that queued the prompt, when a server runs the pack."""

    def __init__(self):
        self.server = None

    def connect(self) -> None:
        try:
            from server import PromptServer  # ComfyUI's own module, imported by its main before any extension loads
        except ImportError:
            return
        self.server = getattr(PromptServer, "instance", None)
        log.debug("notifier connected to the server: %s", self.server is not None)

    def show_text(self, node_id: str | None, text: str) -> None:
        """``text`` under node ``node_id`` in the frontend (nothing without a server or a node)."""
        if self.server is not None and node_id is not None:
            self.server.send_progress_text(text, str(node_id), getattr(self.server, "client_id", None))


NOTIFIER = Notifier()
