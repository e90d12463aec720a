"""Headless Chromium driven over the Chrome DevTools Protocol, from Python, with the standard library only.

The browser speaks CDP over a pipe (``--remote-debugging-pipe``: it reads commands on file descriptor 3
and writes answers on 4, each a JSON message ending in a NUL byte), so no websocket client, no
chromedriver and no Node toolchain are needed. The tests of the web viewer and its benchmark use it::

    with Browser.launch() as browser:
        page = browser.new_page("http://127.0.0.1:8000/")
        page.wait_for("document.querySelector('.runs') !== null")
        page.screenshot(Path("runs.png"))

``find_chromium()`` names the binary (``AETHERGRAPH_CHROMIUM``, else ``chromium``, ``chromium-browser``,
``google-chrome`` on the PATH); on Debian, ``apt-get install chromium`` provides it.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["Browser", "BrowserError", "Page", "find_chromium"]

_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


class BrowserError(RuntimeError):
    """A DevTools command failed, the page threw, or the browser went away."""


def find_chromium() -> str | None:
    """The Chromium binary to drive: ``AETHERGRAPH_CHROMIUM`` if set, else the first candidate on the PATH."""
    configured = os.environ.get("AETHERGRAPH_CHROMIUM")
    if configured:
        return configured if Path(configured).exists() else shutil.which(configured)
    for name in _CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


_TRAMPOLINE = (
    "import os, sys; r, w = int(sys.argv[1]), int(sys.argv[2]); os.dup2(r, 3); os.dup2(w, 4); "
    "os.close(r); os.close(w); os.execv(sys.argv[3], sys.argv[3:])"
)


def _high_pipe() -> tuple[int, int]:
    """A pipe whose ends are above 9, so moving them to descriptors 3 and 4 in the child never collides."""
    low = os.pipe()
    high = (fcntl.fcntl(low[0], fcntl.F_DUPFD_CLOEXEC, 10), fcntl.fcntl(low[1], fcntl.F_DUPFD_CLOEXEC, 10))
    for fd in low:
        os.close(fd)
    return high


class _Reply:
    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: dict[str, Any] = {}
        self.error: dict[str, Any] | None = None


class Browser:
    """One headless Chromium process and its DevTools pipe."""

    def __init__(self, process: subprocess.Popen[bytes], to_browser: int, from_browser: int, profile: str) -> None:
        self._process = process
        self._out = to_browser
        self._in = from_browser
        self._profile = profile
        self._next_id = 0
        self._lock = threading.Lock()
        self._replies: dict[int, _Reply] = {}
        self._pages: dict[str, Page] = {}
        self._closed = False
        self._reader = threading.Thread(target=self._read, name="cdp-reader", daemon=True)
        self._reader.start()

    @classmethod
    @contextmanager
    def launch(cls, binary: str | None = None, *, width: int = 1400, height: int = 1000) -> Iterator[Browser]:
        """Start headless Chromium (a throwaway profile) and stop it on exit."""
        path = binary or find_chromium()
        if path is None:
            raise BrowserError(
                "no Chromium binary found: install Debian's chromium package or set AETHERGRAPH_CHROMIUM"
            )
        profile = tempfile.mkdtemp(prefix="ag-chromium-")
        cmd_r, cmd_w = _high_pipe()
        ans_r, ans_w = _high_pipe()
        flags = [
            "--headless=new",
            "--remote-debugging-pipe",
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--mute-audio",
            "--hide-scrollbars",
        ]
        if os.geteuid() == 0:
            flags.append("--no-sandbox")  # Chromium refuses to run its sandbox as root (CI runs as root)
        # A small trampoline puts the pipe ends at descriptors 3 and 4, where --remote-debugging-pipe expects
        # them, and executes the browser.
        process = subprocess.Popen(
            [sys.executable, "-c", _TRAMPOLINE, str(cmd_r), str(ans_w), path, *flags, "about:blank"],
            pass_fds=(cmd_r, ans_w),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(cmd_r)
        os.close(ans_w)
        browser = cls(process, cmd_w, ans_r, profile)
        try:
            browser.send("Target.setDiscoverTargets", {"discover": False})
            yield browser
        finally:
            browser.close()

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = os.read(self._in, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                break
            buffer += chunk
            while b"\0" in buffer:
                raw, buffer = buffer.split(b"\0", 1)
                self._dispatch(json.loads(raw))
        with self._lock:
            self._closed = True
            for reply in self._replies.values():
                reply.error = {"message": "the browser closed its DevTools pipe"}
                reply.done.set()

    def _dispatch(self, message: dict[str, Any]) -> None:
        if "id" in message:
            with self._lock:
                reply = self._replies.pop(message["id"], None)
            if reply is not None:
                reply.result = message.get("result", {})
                reply.error = message.get("error")
                reply.done.set()
            return
        page = self._pages.get(message.get("sessionId", ""))
        if page is not None:
            page._on_event(message["method"], message.get("params", {}))

    def send(
        self, method: str, params: dict[str, Any] | None = None, *, session: str | None = None, timeout_s: float = 60.0
    ) -> dict[str, Any]:
        """Send one DevTools command and return its result (``timeout_s`` is a hang guard)."""
        reply = _Reply()
        with self._lock:
            if self._closed:
                raise BrowserError(f"{method}: the browser is gone")
            self._next_id += 1
            message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
            if session:
                message["sessionId"] = session
            self._replies[self._next_id] = reply
            os.write(self._out, json.dumps(message).encode() + b"\0")
        if not reply.done.wait(timeout_s):
            raise BrowserError(f"{method}: no answer from the browser within {timeout_s:.0f}s")
        if reply.error is not None:
            raise BrowserError(f"{method}: {reply.error.get('message')} {reply.error.get('data', '')}".strip())
        return reply.result

    def new_page(self, url: str = "about:blank") -> Page:
        """Open a tab (its own session) and navigate it to ``url``."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session, target)
        self._pages[session] = page
        page.send("Page.enable")
        page.send("Runtime.enable")
        if url != "about:blank":
            page.goto(url)
        return page

    def close(self) -> None:
        if self._process.poll() is None:
            with contextlib.suppress(BrowserError):
                self.send("Browser.close", timeout_s=10)
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        for fd in (self._out, self._in):
            with contextlib.suppress(OSError):
                os.close(fd)
        shutil.rmtree(self._profile, ignore_errors=True)


class Page:
    """One tab: navigate, evaluate JavaScript, wait for a condition, take screenshots."""

    def __init__(self, browser: Browser, session: str, target: str) -> None:
        self.browser = browser
        self.session = session
        self.target = target
        self.errors: list[str] = []  # uncaught exceptions and console.error messages of the page
        self._loaded = threading.Event()

    def _on_event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Page.loadEventFired":
            self._loaded.set()
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            text = details.get("exception", {}).get("description") or details.get("text", "")
            self.errors.append(f"uncaught: {text}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            self.errors.append(
                "console.error: "
                + " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            )

    def send(self, method: str, params: dict[str, Any] | None = None, *, timeout_s: float = 60.0) -> dict[str, Any]:
        return self.browser.send(method, params, session=self.session, timeout_s=timeout_s)

    def goto(self, url: str, *, timeout_s: float = 60.0) -> None:
        """Navigate and wait for the load event."""
        self._loaded.clear()
        result = self.send("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise BrowserError(f"navigating to {url}: {result['errorText']}")
        if not self._loaded.wait(timeout_s):
            raise BrowserError(f"{url} did not finish loading within {timeout_s:.0f}s")

    def close(self) -> None:
        """Close the tab (its connections to servers go with it)."""
        self.browser._pages.pop(self.session, None)
        with contextlib.suppress(BrowserError):
            self.browser.send("Target.closeTarget", {"targetId": self.target}, timeout_s=10)

    def bring_to_front(self) -> None:
        """Make this the visible tab (a hidden tab gets no animation frames, as in a real browser)."""
        self.send("Page.bringToFront")

    def evaluate(self, expression: str, *, timeout_s: float = 60.0) -> Any:
        """The value of a JavaScript expression (awaited if it is a promise), as JSON."""
        result = self.send(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True, "userGesture": True},
            timeout_s=timeout_s,
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text", "")
            raise BrowserError(f"evaluating {expression[:200]!r}: {text}")
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, *, timeout_s: float = 60.0, what: str = "") -> Any:
        """Evaluate ``expression`` until it is truthy; return its value (``timeout_s`` is a hang guard)."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                errors = f"; page errors: {self.errors}" if self.errors else ""
                raise BrowserError(f"timed out after {timeout_s:.0f}s waiting for {what or expression}{errors}")
            time.sleep(0.05)

    def screenshot(self, path: Path, *, full_page: bool = True) -> Path:
        """Save a PNG of the page (the whole scrollable page by default)."""
        params: dict[str, Any] = {"format": "png", "captureBeyondViewport": full_page}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", params)["data"]))
        return path
