"""Model folders of the pack, registered beside ComfyUI's own (extra_model_paths.yaml entries win)."""

import os

import folder_paths

SUBJECT_ENCODER_FOLDER = "msdiffusion"
SAM_FOLDER = "sams"
EXTENSIONS = {".bin", ".safetensors", ".pth", ".pt"}


def register_model_folders() -> None:
    for name in (SUBJECT_ENCODER_FOLDER, SAM_FOLDER):
        folder_paths.add_model_folder_path(name, os.path.join(folder_paths.models_dir, name))
        paths, extensions = folder_paths.folder_names_and_paths[name]
        if not extensions:
            folder_paths.folder_names_and_paths[name] = (paths, set(EXTENSIONS))
