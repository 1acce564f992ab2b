"""Command line: convert ms_adapter.bin to .safetensors. See models/ms_diffusion/convert.py."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.ms_diffusion.convert import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
