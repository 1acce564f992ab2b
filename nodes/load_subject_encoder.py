"""Load Subject Encoder: any kind's checkpoint, recognised by its keys (MS-Diffusion, ...)."""

import folder_paths
from comfy_api.latest import io

from ..attention_patches.kinds.base import SubjectSetupError
from ..attention_patches.kinds.registry import builtin_kinds, file_kinds, load_subject_encoder, model_folders
from ..models.safe_text import quoted
from .paths import encoder_files, encoder_path
from .types import CATEGORY, SEARCHABLE, SubjectEncoderSocket

KNOWN_FILES = "; ".join(f"{kind.title} in models/{kind.model_folders[0]}" for kind in file_kinds())
WHERE_TO_GET = "; ".join(f"{kind.title}: {kind.where_to_get}" for kind in file_kinds() if kind.where_to_get)


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
            folders = ", ".join(path for folder in model_folders() for path in folder_paths.get_folder_paths(folder))
            return (f"{quoted(encoder_name)} is not in the subject-encoder folders (looked in: {folders}). Put the file where it "
                    f"belongs ({KNOWN_FILES}). Downloads: {WHERE_TO_GET}.")
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
