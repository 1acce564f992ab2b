"""Load Subject Encoder: any kind's checkpoint, recognised by its keys (MS-Diffusion, ...)."""

import folder_paths
from comfy_api.latest import io

from ..attention_patches.kinds.base import SubjectSetupError
from ..attention_patches.kinds.registry import builtin_kinds, file_kinds, kinds_for_file, load_subject_encoder, model_folders
from ..models.safe_text import quoted
from .paths import encoder_files, encoder_path
from .types import CATEGORY, SEARCHABLE, SubjectEncoderSocket

KNOWN_FILES = "; ".join(f"{kind.title} in models/{kind.model_folders[0]}" for kind in file_kinds())


def not_found_message(encoder_name: str) -> str:
    """Where a missing file goes and where it comes from: only its own kind's, when its name tells the kind."""
    kinds = kinds_for_file(encoder_name)
    if not kinds:
        folders = ", ".join(f"models/{folder}" for folder in model_folders())
        return f"{quoted(encoder_name)} is not in the subject-encoder folders ({folders}); put it in its kind's folder (README, Models)."
    parts = []
    for kind in kinds:
        looked_in = ", ".join(path for folder in kind.model_folders for path in folder_paths.get_folder_paths(folder))
        parts.append(f"{kind.title}: put it in {looked_in}" + (f"; get {kind.where_to_get}" if kind.where_to_get else ""))
    return f"{quoted(encoder_name)} not found. " + " | ".join(parts) + "."


class LoadSubjectEncoder(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MSP_LoadSubjectEncoder",
            display_name="Load Subject Encoder",
            category=CATEGORY,
            **SEARCHABLE,
            description="Loads a subject encoder; its kind is recognised from the file's keys. "
            f"Folders: {KNOWN_FILES}.",
            inputs=[
                io.Combo.Input(
                    "encoder_name",
                    options=sorted(encoder_files()) + list(builtin_kinds()),
                    tooltip=f"a subject encoder file; its kind is recognised from its keys ({KNOWN_FILES}); "
                    "kinds without a weights file are listed by name",
                ),
                io.StyleModel.Input("style_model", optional=True,
                                    tooltip="AnyStory: the FLUX.1 Redux style model (Load Style Model with "
                                    "flux1-redux-dev.safetensors); found in models/style_models when not connected"),
            ],
            outputs=[SubjectEncoderSocket.Output(display_name="subject_encoder")],
        )

    @classmethod
    def validate_inputs(cls, encoder_name: str) -> bool | str:
        if encoder_name not in builtin_kinds() and encoder_path(encoder_name) is None:
            return not_found_message(encoder_name)
        return True

    @classmethod
    def execute(cls, encoder_name: str, style_model=None) -> io.NodeOutput:
        builtin = builtin_kinds().get(encoder_name)
        path = encoder_path(encoder_name) if builtin is None else None
        if builtin is None and path is None:
            raise FileNotFoundError(f"Load Subject Encoder: {quoted(encoder_name)} not found")
        try:
            encoder = builtin.builtin() if builtin is not None else load_subject_encoder(path)
            if style_model is not None:
                encoder = encoder.with_style_model(style_model)
        except SubjectSetupError as e:
            raise SubjectSetupError(f"Load Subject Encoder: {e}") from None
        return io.NodeOutput(encoder)
