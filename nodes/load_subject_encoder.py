"""Load Subject Encoder: ms_adapter.bin (or a .safetensors conversion) from models/msdiffusion."""

import folder_paths
from comfy_api.latest import io

from ..attention_patches.safe_text import quoted
from ..attention_patches.subject_encoder import load_subject_encoder
from .paths import SUBJECT_ENCODER_FOLDER
from .types import CATEGORY, SubjectEncoderSocket


class LoadSubjectEncoder(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MSP_LoadSubjectEncoder",
            display_name="Load Subject Encoder",
            category=CATEGORY,
            description="Loads the MS-Diffusion subject encoder (grounded resampler + cross-attention adapters) "
            "from models/msdiffusion: the official ms_adapter.bin or a .safetensors conversion.",
            inputs=[
                io.Combo.Input(
                    "encoder_name",
                    options=folder_paths.get_filename_list(SUBJECT_ENCODER_FOLDER),
                    tooltip="ms_adapter.bin from the MS-Diffusion release, placed in models/msdiffusion",
                ),
            ],
            outputs=[SubjectEncoderSocket.Output(display_name="subject_encoder")],
        )

    @classmethod
    def validate_inputs(cls, encoder_name: str) -> bool | str:
        if folder_paths.get_full_path(SUBJECT_ENCODER_FOLDER, encoder_name) is None:
            folders = ", ".join(folder_paths.get_folder_paths(SUBJECT_ENCODER_FOLDER))
            return (f"{quoted(encoder_name)} is not in models/msdiffusion (looked in: {folders}). Download ms_adapter.bin from "
                    "the MS-Diffusion release (Hugging Face doge1516/MS-Diffusion) into one of those folders.")
        return True

    @classmethod
    def execute(cls, encoder_name: str) -> io.NodeOutput:
        path = folder_paths.get_full_path_or_raise(SUBJECT_ENCODER_FOLDER, encoder_name)
        return io.NodeOutput(load_subject_encoder(path))
