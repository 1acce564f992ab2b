"""Command line: split FastComposer's pytorch_model.bin into .safetensors files. See models/fastcomposer/convert.py."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.fastcomposer.convert import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
