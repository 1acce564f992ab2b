"""The converter scripts as README runs them: `python scripts/convert_*.py`, outside ComfyUI, in a fresh process."""

import subprocess
import sys

import torch

from devkit import anystory_tiny
from devkit.runtime import PACK_ROOT
from devkit.pack import pack

registry = pack("attention_patches.kinds.registry")


def run_script(name: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(PACK_ROOT / "scripts" / name), *map(str, args)],
                          capture_output=True, text=True, timeout=300, cwd=PACK_ROOT.parent)


def test_ms_adapter_converts_to_a_safetensors_file_the_loader_recognises(tiny, tmp_path):
    source = tiny.save_subject_encoder(tmp_path / "ms_adapter.bin")
    done = run_script("convert_ms_adapter.py", source, tmp_path / "ms_adapter.safetensors")
    assert done.returncode == 0, done.stderr
    assert registry.kind_of(tmp_path / "ms_adapter.safetensors").kind == registry.kind_of(source).kind


def test_anystory_converts_to_a_safetensors_file_the_loader_recognises(tmp_path):
    source = tmp_path / "anystory_flux.bin"
    torch.save(anystory_tiny.tiny_anystory(), source)
    done = run_script("convert_anystory.py", source, tmp_path / "anystory_flux.safetensors", "--dtype", "fp32")
    assert done.returncode == 0, done.stderr
    assert registry.kind_of(tmp_path / "anystory_flux.safetensors").kind == registry.kind_of(source).kind


def test_fastcomposer_converter_names_a_file_that_is_not_fastcomposer(tmp_path):
    source = tmp_path / "pytorch_model.bin"
    torch.save({"unrelated.weight": torch.zeros(2)}, source)
    done = run_script("convert_fastcomposer.py", source, tmp_path / "out")
    assert done.returncode == 1 and "pytorch_model.bin" in done.stderr and "Traceback" not in done.stderr, done.stderr
