"""Headless Chromium (Debian's chromium + chromedriver) driving the real ComfyUI frontend.

Only helpers live here; the browser tests are in test_browser.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path

import pytest

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMEDRIVER_CANDIDATES = ("/usr/bin/chromedriver",)
WINDOW = (1600, 1000)
CHROME_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-dev-shm-usage",
    "--force-device-scale-factor=1",
)

# Frontend user settings pre-set on the server before the page loads: no Templates dialog on a
# fresh profile, no missing-model dialogs.
FRONTEND_SETTINGS = {
    "Comfy.TutorialCompleted": True,
    "Comfy.Workflow.ShowMissingModelsWarning": False,
    "Comfy.Workflow.ShowMissingNodesWarning": False,
}


def find_browser() -> tuple[str, str] | None:
    """(chromium, chromedriver) paths, or None when either is missing."""
    chromium = next((p for p in CHROMIUM_CANDIDATES if Path(p).exists()), None) or shutil.which("chromium")
    driver = next((p for p in CHROMEDRIVER_CANDIDATES if Path(p).exists()), None) or shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


# in CI a missing browser fails the tests (make test installs it); elsewhere they skip
requires_browser = pytest.mark.skipif(find_browser() is None and os.environ.get("CI") != "true",
                                      reason="chromium / chromedriver not installed (`make browser`)")


# The frontend setting that switches the node renderer to Nodes 2.0 (Vue nodes), frontend 1.32.
VUE_NODES_SETTING = "Comfy.VueNodes.Enabled"


@contextlib.contextmanager
def browser_session(server, profile_dir: Path, vue_nodes: bool = False):
    """A headless Chromium with the real frontend of ``server`` open (a context manager; the driver quits after).

    ``vue_nodes`` picks the node renderer: the LiteGraph canvas (False) or Nodes 2.0 (True).
    """
    prepare_frontend(server, vue_nodes)
    driver = make_driver(profile_dir)
    try:
        open_app(driver, server.url)
        wait_for(lambda: driver.execute_script("return !!window.LiteGraph.vueNodesMode") is vue_nodes,
                 message=f"the frontend's node renderer (Nodes 2.0: {vue_nodes})")
        yield driver
    finally:
        driver.quit()


def make_driver(profile_dir: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    found = find_browser()
    if found is None:
        raise RuntimeError("chromium / chromedriver not found; `make browser` installs them")
    chromium, chromedriver = found
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile_dir}")
    options.add_argument(f"--window-size={WINDOW[0]},{WINDOW[1]}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    driver.set_window_size(*WINDOW)
    driver.set_script_timeout(60)
    return driver


def prepare_frontend(server, vue_nodes: bool = False) -> None:
    status, body = server.post("/settings", {**FRONTEND_SETTINGS, VUE_NODES_SETTING: vue_nodes})
    assert status == 200, (status, body)
    settings = server.get("/settings")
    assert settings.get("Comfy.TutorialCompleted") is True, settings
    assert settings.get(VUE_NODES_SETTING) is vue_nodes, settings


def wait_for(condition, timeout: float = 20.0, message: str = "condition", interval: float = 0.05):
    """Poll ``condition()`` until it returns something truthy; return that value."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as e:  # noqa: BLE001 - retried until the deadline, reported below
            last_error = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {message}" + (f" (last error: {last_error!r})" if last_error else ""))


def js(driver, body: str, *args):
    """Run ``body`` as the body of an async function (``args`` is its ``args``) and return its JSON result.

    Exceptions inside the page are re-raised here with the page's stack.
    """
    script = (
        "const done = arguments[arguments.length - 1];"
        "const args = Array.prototype.slice.call(arguments, 0, -1);"
        f"(async (args) => {{ {body} }})(args)"
        ".then((v) => done(JSON.stringify({ok: v === undefined ? null : v})),"
        " (e) => done(JSON.stringify({error: String(e && e.stack || e)})));"
    )
    raw = driver.execute_async_script(script, *args)
    result = json.loads(raw)
    if "error" in result:
        raise AssertionError(f"page script failed: {result['error']}")
    return result["ok"]


def open_app(driver, url: str) -> None:
    """Load the frontend and wait until it is ready and nothing modal is in the way."""
    driver.get(url)
    wait_for(
        lambda: driver.execute_script(
            "return !!(window.app && window.app.graph && window.app.canvas && window.LiteGraph"
            " && window.LiteGraph.registered_node_types['MSP_DrawLayoutBox']"
            " && window.app.extensions?.some((e) => e.name === 'comfyui-multisubject.LayoutBoxCanvas'))"
        ),
        timeout=45, message="the ComfyUI frontend with the layout canvas extension",
    )
    close_dialogs(driver)


def close_dialogs(driver) -> None:
    """Close any dialog (Templates, ...) the frontend opened; there must be none left."""
    for _ in range(5):
        if not driver.execute_script("return document.querySelectorAll('.p-dialog-mask').length"):
            return
        driver.execute_script(
            "document.querySelectorAll('.p-dialog-mask .p-dialog-close-button, .p-dialog-mask [aria-label=\"Close\"]')"
            ".forEach((b) => b.click())"
        )
        time.sleep(0.2)
    assert not driver.execute_script("return document.querySelectorAll('.p-dialog-mask').length"), "a dialog stays open"


def drag(driver, points, duration_ms: int = 15) -> None:
    """A real mouse drag through viewport ``points`` [(x, y), ...] (button down at the first, up at the last)."""
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    builder = ActionBuilder(driver, duration=duration_ms)
    pointer = builder.pointer_action
    (x0, y0), rest = points[0], points[1:]
    pointer.move_to_location(round(x0), round(y0))
    pointer.pointer_down()
    for x, y in rest:
        pointer.move_to_location(round(x), round(y))
    pointer.pointer_up()
    builder.perform()


def click_at(driver, x: float, y: float) -> None:
    drag(driver, [(x, y)])


def severe_logs(driver, needle: str = "") -> list[str]:
    """SEVERE browser console entries (optionally only those mentioning ``needle``)."""
    return [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE" and needle in e.get("message", "")]
