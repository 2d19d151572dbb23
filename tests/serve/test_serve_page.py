"""The web page of `resnets serve` in headless Chromium (Debian's `chromium`), driven over the DevTools protocol:
a file picked in the page comes back as the class `resnets predict` gives it, the Grad-CAM overlay shows, a class
name full of markup stays text, and the console stays free of errors."""
from __future__ import annotations

import contextlib
import copy
import json
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("websockets")

from websockets.sync.client import connect  # noqa: E402

from resnets.inference.predict import predict_images  # noqa: E402

BROWSER_TIMEOUT = 60  # seconds for Chromium to start, and for each wait on the page
MARKUP_CLASS = '<img src=x onerror="document.title=1">&amp;'  # a class folder's name, as a user may have made it


@contextlib.contextmanager
def chromium(binary: str, profile: Path) -> Iterator[str]:
    """A headless Chromium; yields its DevTools websocket URL (from the line it writes on stderr)."""
    process = subprocess.Popen([binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                "--disable-extensions", "--remote-debugging-port=0", f"--user-data-dir={profile}",
                                "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    found: list[str] = []
    ready = threading.Event()

    def read_stderr() -> None:  # to its end: a full pipe would stall the browser
        for line in process.stderr:
            match = re.search(r"DevTools listening on (ws://\S+)", line)
            if match and not found:
                found.append(match.group(1))
                ready.set()
        ready.set()

    threading.Thread(target=read_stderr, daemon=True).start()
    try:
        if not ready.wait(BROWSER_TIMEOUT) or not found:
            pytest.fail(f"chromium wrote no DevTools URL within {BROWSER_TIMEOUT} s (exit code {process.poll()})")
        yield found[0]
    finally:
        process.kill()
        process.wait(timeout=30)


class DevTools:
    """Calls over one DevTools connection; the events that come between the replies are kept in `events`."""

    def __init__(self, ws: Any) -> None:
        self.ws, self.last_id, self.events = ws, 0, []

    def call(self, method: str, session: str | None = None, **params: Any) -> dict:
        self.last_id += 1
        message = {"id": self.last_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        self.ws.send(json.dumps(message))
        deadline = time.monotonic() + BROWSER_TIMEOUT
        while True:  # recv raises TimeoutError at the deadline: the test fails, never hangs
            reply = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if reply.get("id") == self.last_id:
                assert "error" not in reply, f"{method}: {reply['error']}"
                return reply.get("result", {})
            self.events.append(reply)

    def evaluate(self, session: str, expression: str) -> Any:
        result = self.call("Runtime.evaluate", session, expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def wait_for(self, session: str, expression: str, expected: Any) -> None:
        deadline = time.monotonic() + BROWSER_TIMEOUT
        while (value := self.evaluate(session, expression)) != expected:
            if time.monotonic() > deadline:
                shown = self.evaluate(session, "document.getElementById('error')?.textContent")
                pytest.fail(f"{expression} is {value!r}, not {expected!r}, after {BROWSER_TIMEOUT} s; the page "
                            f"shows the error {shown!r}")
            time.sleep(0.1)

    def errors(self) -> list[dict]:
        """Console errors, uncaught exceptions and failed loads the page reported."""
        return [e for e in self.events
                if e.get("method") == "Runtime.exceptionThrown"
                or e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert")
                or e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error"]


def test_a_picked_image_shows_its_class_and_grad_cam_in_a_browser(tiny, serving, tmp_path, chromium_binary):
    model = copy.deepcopy(tiny["model"])
    model.class_names = [MARKUP_CLASS, "banana", "cherry"]
    image = tiny["files"][0]  # class 0's pattern
    expected = predict_images(model, [image], device="cpu")[0]
    assert expected.classes[0] == MARKUP_CLASS
    with serving(model) as url, chromium(chromium_binary, tmp_path / "profile") as devtools_url, \
            connect(devtools_url, max_size=None, open_timeout=BROWSER_TIMEOUT) as ws:
        dt = DevTools(ws)
        target = dt.call("Target.createTarget", url="about:blank")["targetId"]
        session = dt.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "DOM"):
            dt.call(f"{domain}.enable", session)
        dt.call("Page.navigate", session, url=f"{url}/")
        # `?.`: until the navigation commits, the document is still about:blank
        dt.wait_for(session, "document.getElementById('model')?.textContent", "cifar_resnet20, 3 classes (torch)")
        dt.evaluate(session, "document.getElementById('cam').click()")
        root = dt.call("DOM.getDocument", session)["root"]["nodeId"]
        file_input = dt.call("DOM.querySelector", session, nodeId=root, selector="#file")["nodeId"]
        dt.call("DOM.setFileInputFiles", session, nodeId=file_input, files=[str(image)])  # fires `change`

        dt.wait_for(session, "document.querySelector('#top-class')?.textContent", MARKUP_CLASS)
        shown = dt.evaluate(session, "[...document.querySelectorAll('.class-name')].map(e => e.textContent)")
        assert shown == expected.classes
        assert dt.evaluate(session, "document.querySelectorAll('#bars img, #bars b').length") == 0  # text, not markup
        assert dt.evaluate(session, "document.title") == "resnets classifier"  # no onerror ran
        dt.wait_for(session, "(i => i.hidden ? 0 : i.naturalWidth)(document.getElementById('cam-image'))", 32)
        assert dt.evaluate(session, "document.getElementById('error').textContent") == ""
        assert dt.errors() == []

        not_an_image = tiny["root"] / "run" / "best.safetensors"
        dt.call("DOM.setFileInputFiles", session, nodeId=file_input, files=[str(not_an_image)])
        dt.wait_for(session, "document.getElementById('error').textContent",
                    "predict: best.safetensors: not an image (no JPEG, PNG, PPM, BMP, TIFF, WebP or GIF data)")
        # The browser logs the 400 itself; nothing else may go wrong
        assert [e["params"]["entry"].get("source") for e in dt.errors()] == ["network"]
