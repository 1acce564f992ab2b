"""`make demo`: run an example workflow headless on the embedded ComfyUI (default: two_subjects).

Starts the embedded ComfyUI (``.runtime/ComfyUI``, with this pack) on a free port, converts
the example to an API prompt with ``scripts/workflow_api.py`` against the server's own node
definitions, queues it, relays the sampler's progress from the websocket and writes the image
and the route preview to ``output/``.

``--workflow NAME`` (``make demo WORKFLOW=NAME``) runs ``example_workflows/NAME.json`` (or any UI
workflow file): MS-Diffusion (two_subjects, lora, ...), SSR-Encoder (ssr_two_subjects, ...),
FastComposer (fastcomposer_two_people) or AnyStory (anystory_flux).

Real run -- the files it needs are the ones the example's model metadata lists (each loader node's
``properties.models`` / ``manual_models`` and the workflow's own: file, folder, URL),
plus its reference images in ComfyUI's ``input/`` (or ``--subject PHRASE=PATH``). For
two_subjects:

    .runtime/ComfyUI/models/checkpoints/sd_xl_base_1.0.safetensors
    .runtime/ComfyUI/models/clip_vision/clip_vision_g.safetensors
    .runtime/ComfyUI/models/msdiffusion/ms_adapter.bin      (or any .bin / .safetensors encoder there)
    .runtime/ComfyUI/input/dog.png, .runtime/ComfyUI/input/cat.png   (your subjects; or --subject dog=PATH)

If any is missing it lists exactly which, where they go and where to download them, and exits
with status 2.

``make demo TINY=1`` (``--tiny``) runs the same graph on tiny random-weight stand-ins (the test
loaders in tests/custom_nodes/msp_test_nodes, and for the files no loader replaces -- the
subject encoder, LoRAs -- tiny files written by devkit/tiny_files.py to a temporary models
folder), at the example's own size (``SIZE=`` / ``--size`` for another), with the example's
reference drawings (example_workflows/input/) where no ``--subject`` is given: it shows that
everything runs, not what the method does.

The server logs at WARNING level only, and every line it logs while the prompt runs (the nodes'
warnings: a phrase missing from the prompt, a UNet that is not FastComposer's, ...) is shown in
the demo's console.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, replace
from pathlib import Path

from devkit import tiny_files  # imports ComfyUI lazily (only the child that writes the files does)
from scripts.embedded_comfyui import COMFYUI, ROOT, EmbeddedComfyUI, PromptRefused, ServerError, prepare_base
from scripts.make_reference_images import IMAGES as EXAMPLE_IMAGES, draw_image
from scripts.model_metadata import MANUAL_KEY
from scripts.workflow_api import WorkflowError, link_origin, load_workflow, workflow_to_prompt

EXAMPLES = ROOT / "example_workflows"
WORKFLOW = EXAMPLES / "two_subjects.json"
SHARED = " + "  # the label of a reference several subjects are picked from
MODEL_FILE_SUFFIXES = (".safetensors", ".sft", ".bin", ".pth", ".pt", ".ckpt")
ENCODER_EXTENSIONS = (".bin", ".safetensors", ".pth", ".pt")  # as Load Subject Encoder lists them
EXIT_MISSING = 2

# a workflow without Missing Models metadata: the models folder of a loader's first widget
LOADER_FOLDERS = {"CheckpointLoaderSimple": "checkpoints", "CLIPVisionLoader": "clip_vision", "MSP_LoadSubjectEncoder": "msdiffusion",
                  "ControlNetLoader": "controlnet", "LoraLoader": "loras", "UNETLoader": "diffusion_models", "VAELoader": "vae", "CLIPLoader": "text_encoders",
                  "StyleModelLoader": "style_models"}
# real loader -> (test-only stand-in, extra inputs); the stand-ins build tiny random-weight models
TINY_STAND_INS = {
    "CheckpointLoaderSimple": ("MSPTest_TinyCheckpointLoader", {}),
    "CLIPVisionLoader": ("MSPTest_TinyCLIPVisionLoader", {"variant": "bigG"}),
    "ControlNetLoader": ("MSPTest_TinyControlNetLoader", {}),
    "UNETLoader": ("MSPTest_TinyFluxLoader", {}),
    "DualCLIPLoader": ("MSPTest_TinyFluxClipLoader", {}),
    "CLIPLoader": ("MSPTest_TinyCLIPLoader", {}),
    "VAELoader": ("MSPTest_TinyFluxVAELoader", {}),
    "StyleModelLoader": ("MSPTest_TinyReduxLoader", {}),
}

SERVER_LOG_LEVEL = ("--verbose", "WARNING")  # so whatever the server logs while the prompt runs is worth showing
TQDM_FRAGMENT = re.compile(r"^\s*\d+%\||it/s\]|s/it\]")  # the sampler's progress bar, already relayed as steps
TINY_NOTICE = ("TINY MODE: tiny random-weight stand-ins for the example's models (base model, CLIP vision, subject encoder; "
               "test loaders from tests/custom_nodes/msp_test_nodes); the images are noise and only show that the graph runs")

log = logging.getLogger("demo")


class DemoError(Exception):
    pass


@dataclass(frozen=True)
class ModelFile:
    """One model file a workflow loads: from a loader node's widget (``node_id``) or a companion file (``node_id`` None)."""

    folder: str
    name: str
    url: str = ""
    node_id: str | None = None
    loader: str = ""


# ---------------------------------------------------------------- the prompt


def use_tiny_stand_ins(prompt: dict) -> dict:
    """Swap the multi-GB model loaders for the test-only tiny ones (same outputs, same graph)."""
    for node in prompt.values():
        if node["class_type"] in TINY_STAND_INS:
            stand_in, extra = TINY_STAND_INS[node["class_type"]]
            node["class_type"] = stand_in
            node["inputs"].update(extra)
    return prompt


def set_steps(prompt: dict, steps: int) -> None:
    for node in prompt.values():
        if node["class_type"] in ("KSampler", "KSamplerAdvanced") and not isinstance(node["inputs"].get("steps"), list):
            node["inputs"]["steps"] = steps


def set_size(prompt: dict, width: int, height: int) -> None:
    for node in prompt.values():
        if node["class_type"] in ("EmptyLatentImage", "MSP_DrawLayoutBox"):
            node["inputs"].update(width=width, height=height)


def model_files(workflow: dict, nodes: dict[str, dict]) -> list[ModelFile]:
    """Every model file the workflow loads, with its folder and where to get it.

    A loader's file is its widget value that names a model; its folder and URL come from the node's
    entry of that name (``properties.models``, what ComfyUI's Missing Models dialog downloads, or
    ``properties.manual_models``, the files an artist fetches by hand: scripts/model_metadata.py),
    else from LOADER_FOLDERS. The workflow's own ``models`` and ``extra.manual_models`` are companion
    files no widget names (SSR-Encoder's layers file beside its aligner).
    """
    files = []
    for node_id, node in nodes.items():
        properties = node.get("properties") or {}
        listed = {m.get("name"): m for key in ("models", MANUAL_KEY) for m in properties.get(key) or [] if isinstance(m, dict)}
        values = node.get("widgets_values") if isinstance(node.get("widgets_values"), list) else []
        for index, value in enumerate(values):
            if not (isinstance(value, str) and value.lower().endswith(MODEL_FILE_SUFFIXES)):
                continue
            entry = listed.get(value)
            folder = entry.get("directory") if entry else LOADER_FOLDERS.get(node["type"]) if index == 0 else None
            if folder:
                files.append(ModelFile(folder, value, entry.get("url", "") if entry else "", node_id, node["type"]))
    named = {(f.folder, f.name) for f in files}
    companions = [*(workflow.get("models") or []), *((workflow.get("extra") or {}).get(MANUAL_KEY) or [])]
    for entry in companions:
        if isinstance(entry, dict) and entry.get("directory") and entry.get("name") and (entry["directory"], entry["name"]) not in named:
            files.append(ModelFile(entry["directory"], entry["name"], entry.get("url", "")))
    return files


def workflow_files(workflow: dict) -> tuple[list[ModelFile], dict[str, str]]:
    """From the UI workflow, before any server runs.

    Returns the model files (see model_files) and the images the graph loads ``{label: file}``,
    labelled by the subject's phrase for references, else by the node's title.
    """
    nodes = {str(node["id"]): node for node in workflow["nodes"] if node.get("mode", 0) == 0}
    phrases: dict[str, list[str]] = {}
    for node in nodes.values():
        if node["type"] == "MSP_EncodeReference":
            image_input = next(i for i in node["inputs"] if i["name"] == "image")
            if image_input.get("link") is not None:
                phrases.setdefault(link_origin(workflow, image_input["link"]), []).append(node["widgets_values"][0])
    images = {}
    for node_id, node in nodes.items():
        if node["type"] == "LoadImage":  # one photo of several subjects (SSR-Encoder's queries): 'man + dog'
            label = SHARED.join(phrases.get(node_id, ())) or node.get("title") or f"LoadImage #{node_id}"
            images[label] = node["widgets_values"][0]
    return model_files(workflow, nodes), images


def label_phrases(label: str, phrases: list[str]) -> list[str]:
    """The subjects an image label stands for: its phrase, the phrases of a shared photo, or none (a scene, a sketch)."""
    return [p for p in label.split(SHARED) if p in phrases] if label not in phrases else [label]


def subject_phrases(workflow: dict) -> list[str]:
    return [node["widgets_values"][0] for node in workflow["nodes"] if node["type"] == "MSP_EncodeReference"]


# ---------------------------------------------------------------- files


def source_of(model: ModelFile) -> str:
    """Where a missing file comes from: its URL, or the pack's script that writes it (FastComposer's split)."""
    if not model.url:
        return f"a model for {model.loader or 'the workflow'} (see README, Models)"
    script = re.search(r"/(scripts/\w+\.py)(?:#|$)", model.url)
    if script and (ROOT / script.group(1)).is_file():
        return f"written by {script.group(1)} from the official release (see README)"
    if "#" not in model.url and not model.url.endswith("/" + model.name):  # a generic download name
        return f"download {model.url} and save it as {model.name}"
    return f"download {model.url}"


def find_models(comfyui: Path, models: list[ModelFile]) -> tuple[dict[str, tuple[str, str]], list[str]]:
    """The files found, ``{node id: (the workflow's name, the file to use)}``, and a line per missing file."""
    chosen, missing = {}, []
    for model in models:
        directory = comfyui / "models" / model.folder
        if (directory / model.name).is_file():
            continue
        if model.loader == "MSP_LoadSubjectEncoder" and directory.is_dir():
            others = sorted(p.name for p in directory.iterdir() if p.suffix in ENCODER_EXTENSIONS and p.is_file())
            if others:
                chosen[model.node_id] = (model.name, others[0])
                continue
        where = source_of(model)
        if model.loader == "CheckpointLoaderSimple":
            where += " (or another checkpoint of that base model with --checkpoint NAME)"
        missing.append(f"{directory / model.name}  <- {where}")
    return chosen, missing


def resolve_images(comfyui: Path, images: dict[str, str], phrases: list[str], given: dict[str, Path],
                   tiny: bool) -> tuple[dict[str, Path | None], list[str]]:
    """label -> the image to use (None: the example's drawing, tiny only), and a line per missing image."""
    unknown = sorted(set(given) - set(phrases))
    if unknown:
        raise DemoError(f"--subject {unknown[0]}=...: the workflow's subjects are {', '.join(phrases)}")
    chosen, missing = {}, []
    for label, name in images.items():
        owner = next((p for p in label_phrases(label, phrases) if p in given), None)
        path = given[owner] if owner else comfyui / "input" / name
        if path.is_file():
            chosen[label] = path
        elif owner:
            missing.append(f"{path}  <- the reference image for '{owner}' given with --subject")
        elif tiny:
            chosen[label] = None
        elif label_phrases(label, phrases):
            subject = label_phrases(label, phrases)[0]
            missing.append(f"{path}  <- a photo of your {label} (or pass --subject {subject}=PATH)")
        else:
            missing.append(f"{path}  <- the image of '{label}'")
    return chosen, missing


def example_drawing(name: str, target: Path) -> None:
    """The example's reference drawing of that name (drawn afresh for a name the examples do not ship)."""
    shipped = EXAMPLE_IMAGES / Path(name).name
    if shipped.is_file():
        shutil.copyfile(shipped, target)
    else:
        draw_image(name).save(target)


def drawing_note(path: Path, hint: str) -> str:
    """Said of an image that is the example's own drawing (the pack copies them into ComfyUI's input/), else ''."""
    shipped = EXAMPLE_IMAGES / path.name
    same = shipped.is_file() and path.is_file() and path.read_bytes() == shipped.read_bytes()
    return " (the example's drawing)" + hint if same else ""


TINY_WRITER = """
import json, sys
from devkit.runtime import import_comfy
import_comfy()
from devkit import tiny_files
tiny_files.write_tiny_files(sys.argv[1], json.loads(sys.argv[2]))
"""


class TinyFiles:
    """The model files no stand-in loader replaces (subject encoders, LoRAs), tiny, from devkit/tiny_files.py.

    Written by a child process (this one never imports ComfyUI) while the server starts.
    """

    def __init__(self, models_dir: Path, files: list[tuple[str, str]], comfyui: Path, log_path: Path):
        env = dict(os.environ, MSP_COMFYUI_ROOT=str(comfyui))
        self.log_path = log_path
        with log_path.open("w") as log_file:
            # -c with the checkout root as the working directory: devkit imports from there
            self.process = subprocess.Popen([sys.executable, "-c", TINY_WRITER, str(models_dir), json.dumps(files)],
                                            cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)

    def wait(self) -> None:
        if self.process.wait() != 0:
            raise DemoError(f"could not write the tiny model files:\n{self.log_path.read_text(errors='replace')[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


# ---------------------------------------------------------------- the run


def describe_refusal(body: dict, prompt: dict) -> str:
    lines = []
    error = body.get("error") or {}
    if error.get("message"):
        lines.append(f"  {error['message']}: {error.get('details', '')}".rstrip(": "))
    for node_id, entry in (body.get("node_errors") or {}).items():
        for item in entry.get("errors", []):
            lines.append(f"  {_title(prompt, node_id)}: {item.get('message')}: {item.get('details', '')}")
    return "\n".join(lines) or json.dumps(body)[:2000]


class ServerLogRelay:
    """Shows what the server logs (warnings and errors: it runs at WARNING level) while the prompt runs."""

    def __init__(self, log_path: Path):
        self.log_path = log_path
        self.offset = log_path.stat().st_size if log_path.exists() else 0

    def relay(self) -> None:
        if not self.log_path.exists():
            return
        with self.log_path.open("rb") as log_file:
            log_file.seek(self.offset)
            data = log_file.read()
        complete = data.rfind(b"\n") + 1  # a line still being written waits for the next call
        self.offset += complete
        for line in re.split(r"[\r\n]+", data[:complete].decode(errors="replace")):
            if line.strip() and not TQDM_FRAGMENT.search(line):
                log.warning("server: %s", line.rstrip())


class ProgressRelay:
    """Relays one prompt's websocket events to the terminal: which node runs, the sampler's steps, the server's warnings."""

    def __init__(self, prompt: dict, server_log: ServerLogRelay | None = None):
        self.prompt = prompt
        self.last_step = None
        self.server_log = server_log

    def __call__(self, kind: str, data: dict) -> None:
        if self.server_log is not None:
            self.server_log.relay()
        if kind == "executing" and data.get("node") is not None:
            log.info("running %s", _title(self.prompt, data["node"]))
        elif kind == "progress":
            step = (data.get("node"), data.get("value"))
            if step != self.last_step:
                self.last_step = step
                log.info("  step %d/%d", data.get("value", 0), data.get("max", 0))
        elif kind == "execution_cached" and data.get("nodes"):
            log.info("cached: %s", ", ".join(_title(self.prompt, n) for n in data["nodes"]))


def run_prompt(server: EmbeddedComfyUI, prompt: dict, timeout: float) -> dict:
    """Queue the prompt with progress and the server's warnings relayed; the history entry, or a DemoError saying what failed."""
    server_log = ServerLogRelay(server.log_path)
    try:
        history = server.run(prompt, timeout, on_event=ProgressRelay(prompt, server_log))
    except PromptRefused as e:
        raise DemoError("the server refused the graph:\n" + describe_refusal(e.body, prompt)) from None
    finally:
        server_log.relay()
    for kind, data in history.get("status", {}).get("messages", []):
        if kind == "execution_error":
            raise DemoError(f"{_title(prompt, data.get('node_id'))} failed: {data.get('exception_type')}: "
                            f"{data.get('exception_message', '').strip()}")
        if kind == "execution_interrupted":
            raise DemoError("the run was interrupted")
    return history


def _title(prompt: dict, node_id) -> str:
    node = prompt.get(str(node_id), {})
    return f"{node.get('_meta', {}).get('title', node.get('class_type', '?'))} (#{node_id})"


def save_outputs(server: EmbeddedComfyUI, history: dict, prompt: dict, output_dir: Path, stem: str) -> list[Path]:
    """Download the saved image(s) and the route preview(s) of a finished run into output_dir."""
    status = history.get("status", {})
    if status.get("status_str") != "success":
        raise DemoError(f"the run did not succeed: {json.dumps(status)[:2000]}")
    output_dir.mkdir(parents=True, exist_ok=True)
    suffixes = {"SaveImage": "", "MSP_RouterMaskPreview": "_routes"}
    saving = {n: o["images"] for n, o in history.get("outputs", {}).items()
              if prompt.get(n, {}).get("class_type") in suffixes and o.get("images")}
    if not any(prompt[n]["class_type"] == "SaveImage" for n in saving):
        raise DemoError("the run finished but saved no image")
    kinds = [prompt[n]["class_type"] for n in saving]
    written = []
    for node_id, images in saving.items():
        kind = prompt[node_id]["class_type"]
        name = stem + suffixes[kind] + (f"_node{node_id}" if kinds.count(kind) > 1 else "")
        for i, image in enumerate(images):
            query = urllib.parse.urlencode({k: image.get(k, "") for k in ("filename", "subfolder", "type")})
            path = output_dir / f"{name}{'' if len(images) == 1 else f'_{i + 1}'}.png"
            path.write_bytes(server.read(f"/view?{query}"))
            written.append(path)
    return written


# ---------------------------------------------------------------- main


def parse_subject(text: str) -> tuple[str, Path]:
    phrase, sep, path = text.partition("=")
    if not sep or not phrase.strip() or not path.strip():
        raise argparse.ArgumentTypeError(f"expected PHRASE=PATH, e.g. dog=photos/rex.jpg; got '{text}'")
    return phrase.strip(), Path(path.strip()).expanduser()


def workflow_path(text: str) -> Path:
    """A workflow file, or the name of a shipped example (``ssr_two_subjects`` or ``ssr_two_subjects.json``)."""
    path = Path(text).expanduser()
    if path.is_file():
        return path
    example = EXAMPLES / (path.name if path.suffix == ".json" else f"{path.name}.json")
    if example.is_file() and path.parent == Path("."):
        return example
    shipped = ", ".join(sorted(p.stem for p in EXAMPLES.glob("*.json")))
    raise argparse.ArgumentTypeError(f"no workflow file '{text}'; the shipped examples are {shipped}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run an example workflow headless on the embedded ComfyUI.")
    parser.add_argument("--tiny", action="store_true", help="tiny random-weight stand-in models (no downloads; checks that it runs)")
    parser.add_argument("--subject", action="append", type=parse_subject, default=[], metavar="PHRASE=PATH",
                        help="a reference image for a subject of the workflow (two_subjects: dog, cat); default: the example's file in ComfyUI's input/")
    parser.add_argument("--output-dir", type=Path, default=ROOT / "output", help="where the image and the route preview go")
    parser.add_argument("--workflow", type=workflow_path, default=WORKFLOW, metavar="NAME_OR_FILE",
                        help="a shipped example by name (e.g. ssr_two_subjects, fastcomposer_two_people, anystory_flux) "
                        "or a UI workflow file (default: two_subjects)")
    parser.add_argument("--checkpoint", metavar="NAME",
                        help="another checkpoint of the example's base model in models/checkpoints (default: the example's)")
    parser.add_argument("--steps", type=int, help="sampling steps (default: the workflow's)")
    parser.add_argument("--size", type=int, nargs="+", metavar="PIXELS",
                        help="image size: WIDTH HEIGHT, or one number for a square (default: the workflow's, with --tiny too)")
    parser.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    parser.add_argument("--comfyui", type=Path, default=COMFYUI, help="the ComfyUI to run (default: the embedded .runtime/ComfyUI)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds the run may take before the demo gives up")
    args = parser.parse_args(argv)
    if args.size is not None and (len(args.size) > 2 or min(args.size) < 16):
        parser.error(f"--size takes WIDTH HEIGHT or one number of at least 16 pixels, got {' '.join(map(str, args.size))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[demo] %(message)s")
    try:
        return run_demo(args)
    except (DemoError, WorkflowError) as e:
        log.error("%s", e)
        return 1
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130


def other_workflow(args: argparse.Namespace) -> str:
    """The name of the workflow when it is not the default two_subjects (for output names and hints), else ''."""
    return "" if args.workflow.resolve() == WORKFLOW else args.workflow.stem


def run_demo(args: argparse.Namespace) -> int:
    comfyui = args.comfyui.resolve()
    if not (comfyui / "main.py").is_file():
        raise DemoError(f"no ComfyUI at {comfyui}: run `make setup` first")
    workflow = load_workflow(args.workflow)
    models, images = workflow_files(workflow)
    if args.checkpoint:
        models = [replace(m, name=args.checkpoint) if m.loader == "CheckpointLoaderSimple" else m for m in models]
    given = dict(args.subject)
    if args.tiny:
        log.info(TINY_NOTICE)
    chosen_models, missing = ({}, []) if args.tiny else find_models(comfyui, models)
    phrases = subject_phrases(workflow)
    chosen_images, missing_images = resolve_images(comfyui, images, phrases, given, args.tiny)
    missing += missing_images
    if missing:
        log.error("cannot run the demo: %d file(s) missing (see README, Models):\n  %s", len(missing), "\n  ".join(missing))
        workflow_arg = f"WORKFLOW={other_workflow(args)} " if other_workflow(args) else ""
        log.error("or try `make demo %sTINY=1` to check the setup with tiny stand-in models", workflow_arg)
        return EXIT_MISSING

    with tempfile.TemporaryDirectory(prefix="msp-demo-") as scratch:
        scratch = Path(scratch)
        base, tiny_files = prepare_tiny_base(scratch / "comfyui", comfyui, models) if args.tiny else (None, None)
        input_dir = (base or comfyui) / "input"
        image_names = stage_images(chosen_images, images, input_dir, phrases)
        server = EmbeddedComfyUI(args.output_dir / "demo-server.log", base=base, port=args.port or None, comfyui=comfyui,
                                 extra_args=SERVER_LOG_LEVEL)
        try:
            log.info("starting ComfyUI on %s (server log: %s)", server.url, server.log_path)
            server.start(timeout=300)
            if tiny_files is not None:
                tiny_files.wait()
            prompt = workflow_to_prompt(workflow, server.get("/object_info"))
            prepare_prompt(prompt, args, chosen_models, image_names)
            started = time.time()
            history = run_prompt(server, prompt, args.timeout)
            written = save_outputs(server, history, prompt, args.output_dir, output_stem(args.tiny, other_workflow(args)))
        except ServerError as e:
            raise DemoError(str(e)) from None
        except DemoError as e:
            raise DemoError(f"{e}\n--- server log (last lines) ---\n{server.log_tail()}") from None
        finally:
            server.stop()
            if tiny_files is not None:
                tiny_files.stop()
    log.info("done in %.1f s: %s", time.time() - started, ", ".join(str(p) for p in written))
    if args.tiny:
        log.info(TINY_NOTICE)
    return 0


def output_stem(tiny: bool, workflow_name: str) -> str:
    """demo, demo-NAME, demo-tiny, demo-tiny-NAME: a tiny run never overwrites a real one's image (README, make demo)."""
    return "-".join(filter(None, ("demo", "tiny" if tiny else "", workflow_name)))


def prepare_tiny_base(base: Path, comfyui: Path, models: list[ModelFile]) -> tuple[Path, TinyFiles]:
    """A throwaway ComfyUI base directory: the pack, the test loaders, and tiny files under the workflow's names for
    the models no stand-in loader replaces (subject encoder and its companions, LoRAs)."""
    prepare_base(base, test_nodes=True)
    files = sorted({(m.folder, m.name) for m in models if tiny_files.needs_file(m.folder)})
    log.info("writing tiny model files: %s", ", ".join(f"models/{folder}/{name}" for folder, name in files))
    return base, TinyFiles(base / "models", files, comfyui, base / "tiny-files.log")


def stage_images(chosen: dict[str, Path | None], defaults: dict[str, str], input_dir: Path, phrases: list[str]) -> dict[str, str]:
    """Put each image into the server's input folder; label -> the name its LoadImage will use."""
    names = {}
    input_dir.mkdir(parents=True, exist_ok=True)
    for label, source in chosen.items():
        owners = label_phrases(label, phrases)
        hint = f" (pass --subject {owners[0]}=PATH, or make demo SUBJECTS=\"{owners[0]}=PATH ...\", for your own)" if owners else ""
        if source is None:
            target = input_dir / defaults[label]
            example_drawing(defaults[label], target)
            log.info("image '%s': the example's drawing %s%s", label, target, hint)
        elif source.parent.resolve() == input_dir.resolve():
            target = source
            log.info("image '%s': %s%s", label, source, drawing_note(source, hint))
        else:
            target = input_dir / f"msp_demo_{''.join(c if c.isalnum() else '_' for c in label)}{source.suffix.lower() or '.png'}"
            shutil.copyfile(source, target)
            log.info("image '%s': %s (copied to %s)%s", label, source, target, drawing_note(source, hint))
        names[defaults[label]] = target.name
    return names


def prepare_prompt(prompt: dict, args: argparse.Namespace, chosen_models: dict[str, tuple[str, str]], image_names: dict[str, str]) -> None:
    """The files actually found or staged, --checkpoint, the tiny stand-ins, and --steps / --size."""
    for node in prompt.values():
        if args.checkpoint and not args.tiny and node["class_type"] == "CheckpointLoaderSimple":
            node["inputs"]["ckpt_name"] = args.checkpoint
    for node_id, (name, found) in chosen_models.items():
        inputs = prompt[node_id]["inputs"]
        inputs.update({key: found for key, value in inputs.items() if value == name})
    for node in prompt.values():
        if node["class_type"] == "LoadImage" and node["inputs"].get("image") in image_names:
            node["inputs"]["image"] = image_names[node["inputs"]["image"]]
    if args.tiny:
        use_tiny_stand_ins(prompt)
    size = (args.size * 2)[:2] if args.size else None
    if args.steps:
        set_steps(prompt, args.steps)
    if size:
        set_size(prompt, *size)
    sizes = [n["inputs"] for n in prompt.values() if n["class_type"] == "EmptyLatentImage"]
    sampler_steps = [n["inputs"].get("steps") for n in prompt.values() if n["class_type"] == "KSampler"]
    log.info("graph: %s, %d nodes, %s px, %s steps", args.workflow.name, len(prompt),
             ", ".join(f"{s['width']}x{s['height']}" for s in sizes), ", ".join(str(s) for s in sampler_steps))


if __name__ == "__main__":
    sys.exit(main())
