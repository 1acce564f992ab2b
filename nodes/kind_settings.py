"""One generated settings node per kind with settings of its own, built from the kind's declarations.

A kind declares its settings (``Capabilities.settings``); this module turns each declaration
into a widget of the node ``MSP_KindSettings_<kind>`` ("<title> Settings"), whose output plugs
into Apply Multi-Subject Attention's ``kind_settings`` input. Apply and the five nodes never
grow a kind's inputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from comfy_api.latest import io

from ..attention_patches.kinds.base import Setting, SubjectEncoder, SubjectSetupError
from .types import CATEGORY, SEARCHABLE, KindSettingsSocket

NODE_ID_PREFIX = "MSP_KindSettings_"


@dataclass(frozen=True, eq=False)
class KindSettings:
    """The MSP_KIND_SETTINGS socket's payload: one kind's settings as its node set them."""

    kind: str
    title: str
    values: Mapping[str, Any]


def setting_input(setting: Setting) -> io.Input:
    """The widget of one declared setting."""
    common = dict(default=setting.default, tooltip=setting.tooltip or None)
    if setting.type == "FLOAT":
        return io.Float.Input(setting.name, min=setting.min, max=setting.max, step=setting.step, **common)
    if setting.type == "INT":
        return io.Int.Input(setting.name, min=setting.min, max=setting.max, step=setting.step, **common)
    if setting.type == "BOOLEAN":
        return io.Boolean.Input(setting.name, **common)
    if setting.type == "STRING":
        return io.String.Input(setting.name, multiline=True, **common)
    return io.Combo.Input(setting.name, options=list(setting.options), **common)


def settings_node(kind: type[SubjectEncoder]) -> type[io.ComfyNode]:
    """The settings node of ``kind``, from its declared settings."""
    title = f"{kind.title} Settings"

    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=NODE_ID_PREFIX + kind.kind,
            display_name=title,
            category=CATEGORY,
            **SEARCHABLE,
            description=f"{kind.title}'s own settings; connect the output to Apply Multi-Subject Attention's kind_settings.",
            inputs=[setting_input(setting) for setting in kind.capabilities.settings],
            outputs=[KindSettingsSocket.Output(display_name="kind_settings")],
        )

    def execute(cls, **values) -> io.NodeOutput:
        try:
            checked = kind.capabilities.kind_settings(values)
        except SubjectSetupError as e:
            raise SubjectSetupError(f"{title}: {e}") from None
        return io.NodeOutput(KindSettings(kind.kind, kind.title, checked))

    return type(f"KindSettings_{kind.kind}", (io.ComfyNode,), {
        "__doc__": f"{title}: generated from the kind's declared settings.",
        "define_schema": classmethod(define_schema),
        "execute": classmethod(execute),
    })


def settings_nodes(kinds) -> list[type[io.ComfyNode]]:
    """A settings node for every kind that declares settings of its own."""
    return [settings_node(kind) for kind in kinds if kind.capabilities.settings]


def checked_kind_settings(encoder: SubjectEncoder, given: KindSettings | None) -> Mapping[str, Any]:
    """``encoder``'s own settings from a settings node's output (or its defaults), or an error naming the mismatch."""
    if given is not None and not isinstance(given, KindSettings):
        raise SubjectSetupError("kind_settings must come from a kind's Settings node (MSP_KindSettings_...)")
    if given is not None and given.kind != encoder.kind:
        raise SubjectSetupError(f"kind_settings comes from {given.title} Settings, but the subject encoder is "
                                f"{encoder.title}: connect {encoder.title} Settings, or disconnect kind_settings")
    return encoder.capabilities.kind_settings(given.values if given is not None else None)
