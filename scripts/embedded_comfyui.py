"""The embedded ComfyUI (``.runtime/ComfyUI``) as a subprocess, driven over HTTP and its websocket.

Shared by ``make demo`` and the server tests: start it (optionally in a throwaway base directory
holding the pack and the test-only loaders), queue API prompts, follow their events.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
COMFYUI = ROOT / ".runtime" / "ComfyUI"
TEST_NODES = ROOT / "tests" / "custom_nodes" / "msp_test_nodes"
PACK_LINK = "comfyui-multisubject"
BASE_FOLDERS = ("models/msdiffusion", "models/sams", "models/loras", "input", "output", "user")
PROGRESS_TEXT_FRAME = (3).to_bytes(4, "big")  # ComfyUI's binary websocket event: text shown on a running node


class ServerError(RuntimeError):
    """The server exited or did not come up; the message carries the end of its log."""


class PromptRefused(Exception):
    """``POST /prompt`` answered with an error (an invalid graph): ``status`` and the JSON ``body``."""

    def __init__(self, status: int, body: dict):
        super().__init__(f"HTTP {status}: {json.dumps(body)[:2000]}")
        self.status = status
        self.body = body


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_base(base: Path, test_nodes: bool) -> Path:
    """A ComfyUI base directory with this pack (and the test-only loaders) linked into custom_nodes."""
    custom_nodes = base / "custom_nodes"
    custom_nodes.mkdir(parents=True, exist_ok=True)
    for name, target in ((PACK_LINK, ROOT), ("msp_test_nodes", TEST_NODES if test_nodes else None)):
        link = custom_nodes / name
        if target is not None and not link.exists():
            link.symlink_to(target, target_is_directory=True)
    for folder in BASE_FOLDERS:
        (base / folder).mkdir(parents=True, exist_ok=True)
    return base


def cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


class EmbeddedComfyUI:
    def __init__(self, log_path: Path, base: Path | None = None, port: int | None = None, comfyui: Path = COMFYUI,
                 env: dict | None = None, cpu: bool | None = None, extra_args: tuple[str, ...] = (),
                 preexec_fn: Callable[[], None] | None = None):
        """``cpu``: run ComfyUI with ``--cpu`` (None: only when CUDA is not available); ``extra_args``: more of main.py's
        options; ``preexec_fn``: run in the child before ComfyUI starts (e.g. to die with its parent)."""
        self.comfyui, self.base, self.log_path, self.env, self.extra_args = comfyui, base, log_path, env, tuple(extra_args)
        self.preexec_fn = preexec_fn
        self.cpu = not cuda_available() if cpu is None else cpu
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 120.0) -> "EmbeddedComfyUI":
        command = [sys.executable, "main.py", "--listen", "127.0.0.1", "--port", str(self.port), "--disable-auto-launch",
                   "--database-url", "sqlite:///:memory:"]
        if self.base is not None:
            command += ["--base-directory", str(self.base)]
        if self.cpu:
            command.append("--cpu")
        command += self.extra_args
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("w") as log_file:
            self.process = subprocess.Popen(command, cwd=self.comfyui, env={**os.environ, **(self.env or {})},
                                            stdout=log_file, stderr=subprocess.STDOUT, preexec_fn=self.preexec_fn)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"ComfyUI exited while starting:\n{self.log_tail()}")
            try:
                self.get("/system_stats")
                return self
            except OSError:  # not listening yet
                time.sleep(0.3)
        raise ServerError(f"ComfyUI did not start within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def read(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=60) as response:
            return response.read()

    def get(self, path: str):
        return json.loads(self.read(path))

    def post(self, path: str, payload: dict) -> tuple[int, dict]:
        request = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def run(self, prompt: dict, timeout: float = 300.0, on_event: Callable[[str, dict], None] | None = None) -> dict:
        """Queue an API prompt and follow its websocket events until it is done; return its history entry.

        ``on_event(type, data)`` sees every JSON event of this prompt (progress, executing, errors) and the
        text nodes show while they run ("progress_text", data ``{"node", "text"}``).
        A prompt that has not finished after ``timeout`` seconds raises ServerError.
        """
        import websocket

        client_id = uuid.uuid4().hex
        deadline = time.monotonic() + timeout
        ws = websocket.create_connection(f"ws://127.0.0.1:{self.port}/ws?clientId={client_id}", timeout=timeout)
        try:
            status, body = self.post("/prompt", {"prompt": prompt, "client_id": client_id})
            if status != 200:
                raise PromptRefused(status, body)
            prompt_id = body["prompt_id"]
            while True:
                ws.settimeout(max(deadline - time.monotonic(), 0.01))
                try:
                    message = ws.recv()
                except websocket.WebSocketTimeoutException:
                    raise ServerError(f"the prompt did not finish within {timeout:.0f} s") from None
                if not isinstance(message, str):
                    if on_event is not None and message[:4] == PROGRESS_TEXT_FRAME:  # text a node shows while it runs
                        length = int.from_bytes(message[4:8], "big")
                        on_event("progress_text", {"node": message[8:8 + length].decode(errors="replace"),
                                                   "text": message[8 + length:].decode(errors="replace")})
                    continue  # other binary frames: previews
                event = json.loads(message)
                kind, data = event.get("type"), event.get("data") or {}
                if data.get("prompt_id") not in (None, prompt_id):
                    continue
                if on_event is not None:
                    on_event(kind, data)
                # sent after the history entry is stored, on success and on error alike
                if kind == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
                    break
        finally:
            ws.close()
        return self.get(f"/history/{prompt_id}")[prompt_id]
