"""`make run`: start the embedded ComfyUI with this pack on 127.0.0.1 and print its URL."""

import argparse
import logging
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMFYUI = ROOT / ".runtime" / "ComfyUI"

log = logging.getLogger("run_comfyui")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8188)
    args, extra = parser.parse_known_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import torch

    command = [sys.executable, "main.py", "--listen", "127.0.0.1", "--port", str(args.port), "--disable-auto-launch", *extra]
    if not torch.cuda.is_available():
        command.append("--cpu")
    log.info("ComfyUI %s with the multi-subject pack: http://127.0.0.1:%d  (models: %s)", "0.3.75", args.port, COMFYUI / "models")
    try:
        return subprocess.call(command, cwd=COMFYUI)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
