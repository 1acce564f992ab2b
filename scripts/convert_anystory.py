"""Command line: convert anystory_flux.bin to .safetensors. See models/anystory/convert.py."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.anystory.convert import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
