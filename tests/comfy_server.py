"""A real ComfyUI server (the embedded 0.3.75) with the pack and the test nodes, in a throwaway base directory."""

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

import websocket

from comfy_runtime import COMFYUI_ROOT, PACK_ROOT

TEST_NODES = PACK_ROOT / "tests" / "custom_nodes" / "msp_test_nodes"
PACK_LINK = "comfyui-multisubject"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    def __init__(self, base: Path, port: int | None = None, test_nodes: bool = True):
        self.base = base
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.log_path = base / "server.log"
        custom_nodes = base / "custom_nodes"
        custom_nodes.mkdir(parents=True, exist_ok=True)
        for name, target in ((PACK_LINK, PACK_ROOT), ("msp_test_nodes", TEST_NODES if test_nodes else None)):
            link = custom_nodes / name
            if target is not None and not link.exists():
                link.symlink_to(target, target_is_directory=True)
        for folder in ("models/msdiffusion", "models/sams", "models/loras", "input", "output", "user"):
            (base / folder).mkdir(parents=True, exist_ok=True)

    def start(self, timeout: float = 120.0) -> "ComfyServer":
        command = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
                   "--base-directory", str(self.base), "--database-url", "sqlite:///:memory:", "--disable-auto-launch"]
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}  # tiny models: no thread contention
        self.process = subprocess.Popen(command, cwd=COMFYUI_ROOT, env=env, stdout=self.log_path.open("w"), stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited: {self.log()[-3000:]}")
            try:
                self.get("/system_stats")
                return self
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.3)
        raise TimeoutError(f"ComfyUI did not start: {self.log()[-3000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return json.loads(response.read())

    def post(self, path: str, payload: dict) -> tuple[int, dict]:
        request = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def run(self, prompt: dict, timeout: float = 300.0, on_progress=None) -> dict:
        """Queue an API prompt, follow the websocket until it is done; return its history entry."""
        client_id = uuid.uuid4().hex
        ws = websocket.create_connection(f"ws://127.0.0.1:{self.port}/ws?clientId={client_id}", timeout=timeout)
        try:
            status, body = self.post("/prompt", {"prompt": prompt, "client_id": client_id})
            if status != 200:
                raise PromptError(status, body)
            prompt_id = body["prompt_id"]
            while True:
                message = ws.recv()
                if not isinstance(message, str):
                    continue
                event = json.loads(message)
                data = event.get("data", {})
                if on_progress is not None and event.get("type") == "progress":
                    on_progress(data)
                # sent after the history entry is stored, on success and on error alike
                if event.get("type") == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
                    break
        finally:
            ws.close()
        return self.get(f"/history/{prompt_id}")[prompt_id]


class PromptError(Exception):
    def __init__(self, status: int, body: dict):
        super().__init__(f"HTTP {status}: {json.dumps(body)[:2000]}")
        self.status = status
        self.body = body
