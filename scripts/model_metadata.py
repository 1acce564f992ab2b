"""The examples' model metadata, split so ComfyUI's Missing Models dialog never shows a red error.

Frontend 1.32.9 lists a workflow's ``models`` (each node's ``properties.models`` entry for the file
its widget names, and the workflow's own ``models``) and offers a Download button only for
``.safetensors`` / ``.sft`` files from Hugging Face or Civitai; every other entry (a ``.bin``
release, a Google Drive folder, a file the pack's converter writes) is shown with a red error
("Only allowed suffixes are ...", "Download not allowed from source ..."), which reads as broken.
So the frontend's keys hold only the files it can download, and every other file sits, with the
same fields, under ``manual_models`` (``properties.manual_models`` of its node, or the workflow's
``extra.manual_models`` for a companion file no widget names), which the frontend ignores; the
example's note links every file, and ``make demo`` reads both keys. Run after adding or editing an
example to move each entry to its key:

    .venv/bin/python scripts/model_metadata.py   # rewrites example_workflows/*.json in place
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "example_workflows"
# what frontend 1.32.9's Missing Models dialog downloads itself (MissingModelsWarning.vue)
DOWNLOAD_SOURCES = ("https://huggingface.co/", "https://civitai.com/")
DOWNLOAD_SUFFIXES = (".safetensors", ".sft")
MANUAL_KEY = "manual_models"

log = logging.getLogger("model_metadata")


def frontend_downloads(entry: dict) -> bool:
    """True if the Missing Models dialog offers this entry's download (else it shows a red error for it)."""
    return str(entry.get("url", "")).startswith(DOWNLOAD_SOURCES) and str(entry.get("name", "")).endswith(DOWNLOAD_SUFFIXES)


def _split(holder: dict, frontend_key: str, manual_holder: dict) -> None:
    """``holder[frontend_key]``: the entries the frontend downloads; ``manual_holder[MANUAL_KEY]``: the others."""
    entries = [*holder.get(frontend_key, []), *manual_holder.get(MANUAL_KEY, [])]
    for target, key, chosen in ((holder, frontend_key, [e for e in entries if frontend_downloads(e)]),
                                (manual_holder, MANUAL_KEY, [e for e in entries if not frontend_downloads(e)])):
        if chosen:
            target[key] = chosen
        else:
            target.pop(key, None)


def split_models(workflow: dict) -> None:
    """Put every model entry of a UI workflow under the key it belongs to (in place)."""
    for node in workflow.get("nodes", []):
        if node.get("properties"):
            _split(node["properties"], "models", node["properties"])
    _split(workflow, "models", workflow.setdefault("extra", {}))


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for path in sorted(EXAMPLES.glob("*.json")):
        text = path.read_text()
        workflow = json.loads(text)
        split_models(workflow)
        fixed = json.dumps(workflow, indent=2, ensure_ascii=False) + "\n"
        if fixed != text:
            path.write_text(fixed)
            log.info("%s: model entries moved to their keys", path.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
