"""The layout rules, read from the code's imports (ast): a new kind is a folder plus one line in the registry.

- kinds never import each other (neither their attention_patches/kinds/<kind>/ nor their models/<kind>/);
- generic code never imports a kind: only attention_patches/kinds/registry.py lists them;
- kinds/base.py and nodes/ never import auto_routing (a feature of the routed attention, not of the seam);
- kinds never import attention_patches/patch.py (the routed attention's attn2 patch): what they share
  comes from the layers (attention_patches/unet/, attention_patches/dit/) and the lifecycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("attention_patches", "models", "nodes")  # the pack's code; tests, bench and scripts use kinds on purpose
KINDS_DIR = ROOT / "attention_patches" / "kinds"
KIND_NAMES = sorted(p.name for p in KINDS_DIR.iterdir() if p.is_dir() and (p / "__init__.py").exists())
REGISTRY = "attention_patches.kinds.registry"
ROUTED_ATTENTION_PATCH = "attention_patches.patch"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every pack module ``path`` imports, as a dotted name from the pack root (relative imports resolved)."""
    return imports_of(path.read_text(), module_name(path), path.name == "__init__.py")


def imports_of(source: str, module: str, is_package: bool) -> set[str]:
    package = module.split(".") if is_package else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            stem = ".".join(base + ([node.module] if node.module else []))
            found.add(stem)
            found |= {f"{stem}.{alias.name}" for alias in node.names}  # `from . import x` imports a module x
    return {name for name in found if name.split(".")[0] in PACKAGES}


SOURCES = {module_name(path): imports(path) for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))}


def kind_of_module(name: str) -> str | None:
    """The kind a module belongs to: attention_patches.kinds.<kind>... or models.<kind>..."""
    parts = name.split(".")
    if parts[:2] == ["attention_patches", "kinds"] and len(parts) > 2 and parts[2] in KIND_NAMES:
        return parts[2]
    if parts[0] == "models" and len(parts) > 1 and parts[1] in KIND_NAMES:
        return parts[1]
    return None


def test_every_kind_folder_has_its_models_folder_name_and_the_rules_see_them():
    assert {"ms_diffusion", "ssr_encoder", "fastcomposer", "anystory"} <= set(KIND_NAMES)
    assert all(kind_of_module(f"attention_patches.kinds.{kind}.x") == kind for kind in KIND_NAMES)
    assert not any(path.suffix == ".py" and path.stem in KIND_NAMES for path in (ROOT / "models").iterdir()), \
        "a kind's model files belong in models/<kind>/"


@pytest.mark.parametrize("module", sorted(SOURCES))
def test_kinds_never_import_each_other_and_generic_code_never_imports_a_kind(module):
    own = kind_of_module(module)
    kinds_imported = {kind_of_module(name) for name in SOURCES[module]} - {None}
    if module == REGISTRY:
        return  # the one list of kinds
    if own is None:
        assert not kinds_imported, f"generic {module} imports kind(s) {sorted(kinds_imported)}: only the registry may"
    else:
        assert kinds_imported <= {own}, f"kind {own}'s {module} imports kind(s) {sorted(kinds_imported - {own})}"


@pytest.mark.parametrize("module", sorted(m for m in SOURCES if m == "attention_patches.kinds.base" or m.startswith("nodes")))
def test_the_seam_and_the_nodes_never_import_auto_routing(module):
    assert "attention_patches.auto_routing" not in SOURCES[module]


def reaches_into(imported: set[str], module: str) -> bool:
    """Whether ``imported`` holds ``module`` or a name from it (``from ..patch import x`` lists both)."""
    return any(name == module or name.startswith(f"{module}.") for name in imported)


@pytest.mark.parametrize("module", sorted(m for m in SOURCES if kind_of_module(m)))
def test_kinds_never_import_the_routed_attentions_patch(module):
    assert not reaches_into(SOURCES[module], ROUTED_ATTENTION_PATCH), \
        f"kind {kind_of_module(module)}'s {module} imports attention_patches/patch.py: take what it needs from the layers"


def test_the_rules_catch_a_violation():
    """Relative imports are resolved the way Python does, so a kind reaching into another one (or into patch.py) is seen."""
    source = "from ..fastcomposer.tokens import x\nfrom ....models.anystory import reference\nfrom ..base import y\n"
    found = imports_of(source, "attention_patches.kinds.ms_diffusion.encoder", is_package=False)
    assert {kind_of_module(name) for name in found} - {None} == {"fastcomposer", "anystory"}
    assert "attention_patches.kinds.base" in found and "models.anystory.reference" in found
    reaching = imports_of("from ...patch import chunk_rows\n", "attention_patches.kinds.fastcomposer.fusion_patch", is_package=False)
    assert reaches_into(reaching, ROUTED_ATTENTION_PATCH)
    own_patch = imports_of("from .patch import LamicPatch\n", "attention_patches.kinds.lamic.encoder", is_package=False)
    assert not reaches_into(own_patch, ROUTED_ATTENTION_PATCH)
