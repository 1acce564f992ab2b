"""Command line: convert ms_adapter.bin to .safetensors. See models/convert.py."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.convert import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
