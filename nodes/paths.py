"""Model folders of the pack, registered beside ComfyUI's own (extra_model_paths.yaml entries win)."""

import logging
import os
import shutil
from pathlib import Path

import folder_paths

from ..attention_patches.kinds.registry import file_kinds, model_folders

SAM_FOLDER = "sams"
EXTENSIONS = {".bin", ".safetensors", ".pth", ".pt"}
EXAMPLE_IMAGES = Path(__file__).resolve().parent.parent / "example_workflows" / "input"

log = logging.getLogger(__name__)


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


def create_model_folders() -> None:
    """Each kind's documented folder (its first) and the SAM folder under ComfyUI's models/, when missing.

    So an artist sees where a download goes; the kinds' alternative folders are only searched.
    """
    for name in dict.fromkeys([*(kind.model_folders[0] for kind in file_kinds() if kind.model_folders), SAM_FOLDER]):
        try:
            os.makedirs(os.path.join(folder_paths.models_dir, name), exist_ok=True)
        except OSError as error:  # a read-only install: the folders are only a convenience
            log.warning("could not create models/%s: %s", name, error)


def provide_example_images() -> None:
    """Copy the examples' reference drawings into ComfyUI's input/ where no file of that name is there yet.

    The examples' Load Image nodes name them; an artist's own file of the same name is never replaced.
    """
    try:
        input_dir = Path(folder_paths.get_input_directory())
        input_dir.mkdir(parents=True, exist_ok=True)
        for image in sorted(EXAMPLE_IMAGES.glob("*.png")):
            target = input_dir / image.name
            if not target.exists() and not target.is_symlink():
                shutil.copyfile(image, target)
    except OSError as error:
        log.warning("could not copy the example images into ComfyUI's input folder: %s", error)


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
