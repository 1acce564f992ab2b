"""Model folders of the pack, registered beside ComfyUI's own (extra_model_paths.yaml entries win)."""

import os

import folder_paths

from ..attention_patches.kinds.registry import model_folders

SAM_FOLDER = "sams"
EXTENSIONS = {".bin", ".safetensors", ".pth", ".pt"}


def register_model_folders() -> None:
    for name in (*model_folders(), SAM_FOLDER):
        folder_paths.add_model_folder_path(name, os.path.join(folder_paths.models_dir, name))
        paths, extensions = folder_paths.folder_names_and_paths[name]
        if not extensions:
            folder_paths.folder_names_and_paths[name] = (paths, set(EXTENSIONS))


def _is_file(folder: str, name: str) -> bool:
    """A regular file, or a symlink to one: a link that dangles, loops or points to a device or folder is not listed
    (ComfyUI's listing includes them, and the node would then call its own choice missing)."""
    return any(os.path.isfile(os.path.join(base, name)) for base in folder_paths.get_folder_paths(folder))


def encoder_files() -> dict[str, tuple[str, str]]:
    """Load Subject Encoder's choices: {listed name: (folder name, file name)} over every kind's folders.

    A file is listed by its name; when two folders hold the same name, each is listed as
    ``folder/name`` so the choice is never ambiguous. Only files that can be opened are listed.
    """
    found = [(folder, name) for folder in model_folders() for name in folder_paths.get_filename_list(folder) if _is_file(folder, name)]
    counts: dict[str, int] = {}
    for _, name in found:
        counts[name] = counts.get(name, 0) + 1
    return {(name if counts[name] == 1 else f"{folder}/{name}"): (folder, name) for folder, name in found}


def encoder_path(listed: str) -> str | None:
    """The full path of a Load Subject Encoder choice (a listed name, or ``folder/name``), or None."""
    entry = encoder_files().get(listed)
    if entry is None:
        folder, _, name = listed.partition("/")
        if folder in model_folders() and name:
            entry = (folder, name)
        else:
            matches = [folder for folder in model_folders() if folder_paths.get_full_path(folder, listed)]
            entry = (matches[0], listed) if len(matches) == 1 else None
    return folder_paths.get_full_path(*entry) if entry else None
