"""Declared capabilities: a kind's own settings become one generated node, checked on Apply; kinds without a file."""

import math

import pytest
import torch

from devkit.helpers import layout
from devkit.pack import pack

base = pack("attention_patches.kinds.base")
registry = pack("attention_patches.kinds.registry")
nodes = pack("nodes")
kind_settings = pack("nodes.kind_settings")

SETTINGS = (
    base.Setting("strength", "FLOAT", 0.5, min=0.0, max=2.0, step=0.05, tooltip="how strong"),
    base.Setting("rounds", "INT", 3, min=1, max=8),
    base.Setting("soft", "BOOLEAN", False),
    base.Setting("note", "STRING", ""),
    base.Setting("mode", "COMBO", "fast", options=("fast", "exact")),
)


def plain_model():
    """A real ModelPatcher around a one-layer module: Apply's sampling-time checks need a MODEL's options."""
    import comfy.model_patcher

    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(torch.nn.Linear(1, 1), load_device=cpu, offload_device=cpu)


class SettingsKind(base.SubjectEncoder):
    """A test-only kind: declares one setting of every type and no weights file; Apply hands it its settings."""

    kind = "test_settings_kind"
    title = "Test Kind"
    base_model = "any"
    model_folders = ("test_settings_kind",)
    capabilities = base.Capabilities(needs_file=False, settings=SETTINGS)
    builtin_name = "Test Kind (no weights file)"

    def __init__(self):
        self.name = "builtin"
        self.received = None

    @classmethod
    def recognises(cls, keys) -> bool:
        return False

    @classmethod
    def load(cls, path):
        raise AssertionError("a kind without a file is never loaded from one")

    @classmethod
    def builtin(cls):
        return cls()

    def encode(self, reference):
        return reference.phrase

    def apply(self, model, subjects, layout, settings, recorder=None):
        self.received = self.own_settings(settings)
        return model.clone()


@pytest.fixture
def registered(monkeypatch):
    """SettingsKind in the registry for one test (the node list is rebuilt from the patched registry)."""
    monkeypatch.setattr(registry, "KINDS", registry.KINDS + (SettingsKind,))
    return SettingsKind


def run_apply(encoder, kind_settings_out=None, layout=None):
    subjects = nodes.EncodeReference.execute(image=torch.rand(1, 8, 8, 3),
                                             phrase="dog").args[0]
    return nodes.ApplyMultiSubjectAttention.execute(model=plain_model(), subject_encoder=encoder, subjects=subjects, scale=0.6,
                                                    start_percent=0.0, end_percent=1.0, drop_grounding=False,
                                                    kind_settings=kind_settings_out, layout=layout)


def test_each_declared_setting_becomes_a_widget_of_the_generated_node():
    node = kind_settings.settings_node(SettingsKind)
    schema = node.define_schema()
    assert schema.node_id == "MSP_KindSettings_test_settings_kind" and schema.display_name == "Test Kind Settings"
    widgets = {i.id: i for i in schema.inputs}
    assert list(widgets) == [s.name for s in SETTINGS]
    assert (widgets["strength"].min, widgets["strength"].max, widgets["strength"].default) == (0.0, 2.0, 0.5)
    assert widgets["mode"].options == ["fast", "exact"] and widgets["strength"].tooltip == "how strong"
    assert [o.io_type for o in schema.outputs] == ["MSP_KIND_SETTINGS"]
    out = node.execute(strength=1.5, rounds=2, soft=True, note="hi", mode="exact").args[0]
    assert dict(out.values) == {"strength": 1.5, "rounds": 2, "soft": True, "note": "hi", "mode": "exact"}


def test_only_kinds_with_settings_get_a_node_and_the_registered_nodes_follow_the_registry():
    generated = kind_settings.settings_nodes(registry.KINDS + (SettingsKind,))
    assert [n.define_schema().node_id for n in generated] == [
        f"MSP_KindSettings_{k.kind}" for k in registry.KINDS + (SettingsKind,) if k.capabilities.settings]
    registered = {n.define_schema().node_id for n in nodes.NODES}
    assert {f"MSP_KindSettings_{k.kind}" for k in registry.KINDS if k.capabilities.settings} <= registered


def test_apply_hands_the_kind_its_settings_or_its_defaults():
    encoder = SettingsKind()
    run_apply(encoder)
    assert dict(encoder.received) == {s.name: s.default for s in SETTINGS}
    node = kind_settings.settings_node(SettingsKind)
    run_apply(encoder, node.execute(strength=2.0, rounds=8, soft=True, note="x", mode="exact").args[0])
    assert encoder.received["strength"] == 2.0 and encoder.received["mode"] == "exact"


@pytest.mark.parametrize("name, value, allowed", [
    ("strength", math.nan, "a finite number from 0 to 2"),
    ("strength", 2.5, "a finite number from 0 to 2"),
    ("rounds", 0, "an integer from 1 to 8"),
    ("mode", "slow", "one of 'fast', 'exact'"),
    ("note", "x" * 3000, "text of at most 2000 characters"),
])
def test_a_bad_value_is_refused_on_apply_naming_the_setting_and_the_allowed_range(name, value, allowed):
    values = {s.name: s.default for s in SETTINGS} | {name: value}
    sent = kind_settings.KindSettings(SettingsKind.kind, SettingsKind.title, values)  # e.g. an API prompt's linked value
    with pytest.raises(base.SubjectSetupError, match=f"^Apply Multi-Subject Attention: setting '{name}' must be {allowed}"):
        run_apply(SettingsKind(), sent)
    with pytest.raises(base.SubjectSetupError, match=f"^Test Kind Settings: setting '{name}' must be {allowed}"):
        kind_settings.settings_node(SettingsKind).execute(**values)


def test_another_kinds_settings_are_refused_by_name(tiny_encoder):
    other = kind_settings.KindSettings(SettingsKind.kind, SettingsKind.title, {})
    with pytest.raises(base.SubjectSetupError, match="kind_settings comes from Test Kind Settings, but the subject encoder "
                       r"is MS-Diffusion \(SDXL\)"):
        run_apply(tiny_encoder, other, layout([(0.0, 0.0, 1.0, 1.0)]))


def test_declarations_that_cannot_be_checked_fail_at_import():
    with pytest.raises(TypeError, match="needs min and max"):
        base.Setting("x", "FLOAT", 0.0)
    with pytest.raises(base.SubjectSetupError, match="setting 'x' must be one of 'a'"):
        base.Setting("x", "COMBO", "b", options=("a",))
    with pytest.raises(TypeError, match="required inputs"):
        base.Capabilities(reference_inputs=frozenset({"clip"}), required_inputs=frozenset({"vae"}))
    with pytest.raises(TypeError, match="unknown reference inputs"):
        base.Capabilities(reference_inputs=frozenset({"style"}))


def test_a_kind_without_a_file_is_listed_and_built_by_name(registered):
    load = nodes.LoadSubjectEncoder
    options = next(i for i in load.define_schema().inputs if i.id == "encoder_name").options
    assert "Test Kind (no weights file)" in options
    assert load.validate_inputs("Test Kind (no weights file)") is True
    assert isinstance(load.execute("Test Kind (no weights file)").args[0], SettingsKind)
    assert "not in the subject-encoder folders" in load.validate_inputs("Unknown Kind (no weights file)")
    with pytest.raises(FileNotFoundError, match="Load Subject Encoder: 'Unknown Kind"):
        load.execute("Unknown Kind (no weights file)")
    assert "test_settings_kind" not in registry.model_folders()  # no folder to scan for a kind without files
