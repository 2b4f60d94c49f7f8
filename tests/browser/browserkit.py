"""Drive Debian's headless Chromium from a test: serve a directory on 127.0.0.1, open a
page, evaluate JavaScript, take a screenshot.

Chromium is spoken to over the Chrome DevTools Protocol on a websocket
(``websocket-client``), so nothing but the Debian package is needed: no browser
download, no driver. Every wait is bounded; a timeout raises ``BrowserTimeout`` with
what was being waited for.

    with serve_directory(root, routes={"/data": b"..."}) as base, Browser() as b:
        b.navigate(base + "/")
        b.wait_for("document.title !== ''", timeout=30, what="the page title")
        b.screenshot(Path("page.png"))
"""

from __future__ import annotations

import base64
import contextlib
import functools
import http.server
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import websocket

#: Flags for a quiet, repeatable headless run: no updates, no first-run UI, no network
#: but what the page asks for. As root Chromium refuses to start without --no-sandbox.
CHROMIUM_FLAGS = (
    "--headless=new",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-default-apps",
    "--disable-sync",
    "--disable-extensions",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--mute-audio",
    "--hide-scrollbars",
    "--remote-debugging-port=0",
    "--remote-debugging-address=127.0.0.1",
)


class BrowserError(RuntimeError):
    """Chromium did not start, or a page raised an exception."""


class BrowserTimeout(BrowserError):
    """A bounded wait ran out."""


def chromium_path() -> str | None:
    """Debian's Chromium, or None when it is not installed."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


# -- serving files ---------------------------------------------------------------------


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Files from the served directory, plus fixed routes answered from memory."""

    routes: Mapping[str, tuple[bytes, str]] = {}

    def do_GET(self) -> None:
        route = self.routes.get(self.path.split("?", 1)[0])
        if route is None:
            super().do_GET()
            return
        body, ctype = route
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def end_headers(self) -> None:
        # A page served twice in one session must not come from a stale cache.
        self.send_header("Cache-Control", "no-store")
        self.send_header("Access-Control-Allow-Origin", "*")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serve_directory(
    root: Path, routes: Mapping[str, bytes | tuple[bytes, str]] | None = None
) -> Iterator[str]:
    """Serve ``root`` on 127.0.0.1 at a free port for the ``with`` block; yields the base
    URL (no trailing slash). ``routes`` maps a path (``/x``) to bytes, or to bytes and a
    content type, served instead of a file."""
    table: dict[str, tuple[bytes, str]] = {}
    for path, value in (routes or {}).items():
        if isinstance(value, tuple):
            table[path] = value
        else:
            table[path] = (value, "application/octet-stream")
    handler = type("Handler", (_Handler,), {"routes": table})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(root))
    )
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="serve_directory", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# -- the browser -----------------------------------------------------------------------


class Browser:
    """One headless Chromium with one page, driven over the DevTools Protocol.

    Use it as a context manager: the browser process and its profile directory are
    removed on exit, whatever happened."""

    def __init__(
        self,
        width: int = 1600,
        height: int = 1000,
        start_timeout: float = 30.0,
        executable: str | None = None,
    ) -> None:
        self.width = width
        self.height = height
        self.start_timeout = start_timeout
        self.executable = executable or chromium_path()
        self.proc: subprocess.Popen[bytes] | None = None
        self.ws: websocket.WebSocket | None = None
        self.profile: str | None = None
        self.log: Path | None = None
        self.next_id = 0
        #: Console messages and uncaught exceptions of the page, for failure reports.
        self.console: list[str] = []

    def __enter__(self) -> Browser:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        if self.executable is None:
            raise BrowserError("chromium is not installed (Debian package 'chromium')")
        self.profile = tempfile.mkdtemp(prefix="browserkit-")
        argv = [self.executable, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}"]
        argv.append(f"--window-size={self.width},{self.height}")
        if os.geteuid() == 0:
            argv.append("--no-sandbox")
        argv.append("about:blank")
        # Its chatter goes to a file: a pipe nobody reads would fill and stall it. Its own
        # session, so that closing ends its helper processes too.
        self.log = Path(self.profile) / "chromium.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        port = self._devtools_port()
        page = self._page_target(port)
        # Chromium checks the Origin header of DevTools websockets; sending none is allowed.
        self.ws = websocket.create_connection(
            page["webSocketDebuggerUrl"], timeout=self.start_timeout, suppress_origin=True
        )
        self.call("Page.enable")
        self.call("Runtime.enable")
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=self.width,
            height=self.height,
            deviceScaleFactor=1,
            mobile=False,
        )

    def _devtools_port(self) -> int:
        """Chromium writes the port it picked to DevToolsActivePort in its profile."""
        assert self.profile is not None and self.proc is not None
        marker = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.log.read_text(errors="replace")[-2000:] if self.log else ""
                raise BrowserError(f"chromium exited with {self.proc.returncode}: {err}")
            with contextlib.suppress(FileNotFoundError, ValueError, IndexError):
                return int(marker.read_text().splitlines()[0])
            time.sleep(0.05)
        raise BrowserTimeout(f"chromium did not open its DevTools port in {self.start_timeout}s")

    def _page_target(self, port: int) -> dict[str, Any]:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                    targets = json.load(r)
                pages = [t for t in targets if t.get("type") == "page"]
                if pages:
                    return pages[0]
            time.sleep(0.1)
        raise BrowserTimeout("chromium has no page target")

    def close(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(Exception):
                self.ws.close()
            self.ws = None
        if self.proc is not None:
            self._end_session(self.proc)
            self.proc = None
        if self.profile is not None:
            shutil.rmtree(self.profile, ignore_errors=True)
            self.profile = None

    @staticmethod
    def _end_session(proc: subprocess.Popen[bytes]) -> None:
        """End the session Chromium leads (the browser and the helpers it started):
        politely, then for good if anything is left after a few seconds."""
        group = proc.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                os.killpg(group, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)

    # -- the protocol ------------------------------------------------------------------

    def call(self, method: str, timeout: float = 60.0, **params: Any) -> dict[str, Any]:
        """Send one DevTools command and return its result; events that arrive
        meanwhile are noted (console output) or dropped."""
        if self.ws is None:
            raise BrowserError("the browser is not started")
        self.next_id += 1
        mine = self.next_id
        self.ws.send(json.dumps({"id": mine, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserTimeout(f"no answer to {method} in {timeout}s")
            self.ws.settimeout(left)
            try:
                msg = json.loads(self.ws.recv())
            except websocket.WebSocketTimeoutException:
                raise BrowserTimeout(f"no answer to {method} in {timeout}s") from None
            if msg.get("id") == mine:
                if "error" in msg:
                    raise BrowserError(f"{method}: {msg['error'].get('message', msg['error'])}")
                return msg.get("result", {})
            self._note_event(msg)

    def _note_event(self, msg: dict[str, Any]) -> None:
        method = msg.get("method")
        params = msg.get("params", {})
        if method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
            self.console.append(f"console.{params.get('type')}: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            desc = details.get("exception", {}).get("description") or details.get("text")
            self.console.append(f"exception: {desc}")

    def navigate(self, url: str, timeout: float = 60.0) -> None:
        res = self.call("Page.navigate", timeout=timeout, url=url)
        if res.get("errorText"):
            raise BrowserError(f"navigating to {url}: {res['errorText']}")

    def evaluate(self, expression: str, timeout: float = 60.0) -> Any:
        """The value of a JavaScript expression in the page (promises are awaited);
        it must be JSON-serialisable. A thrown exception raises ``BrowserError``."""
        res = self.call(
            "Runtime.evaluate",
            timeout=timeout,
            expression=expression,
            awaitPromise=True,
            returnByValue=True,
        )
        if "exceptionDetails" in res:
            d = res["exceptionDetails"]
            desc = d.get("exception", {}).get("description") or d.get("text")
            raise BrowserError(f"JavaScript error: {desc}")
        return res.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float, what: str, interval: float = 0.25) -> Any:
        """Evaluate ``expression`` until it is truthy and return that value; raise
        ``BrowserTimeout`` naming ``what`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression, timeout=max(1.0, deadline - time.monotonic()))
            if value:
                return value
            if time.monotonic() >= deadline:
                tail = "\n".join(self.console[-20:])
                raise BrowserTimeout(f"waited {timeout}s for {what}; page console:\n{tail}")
            time.sleep(interval)

    def screenshot(self, path: Path, timeout: float = 60.0) -> None:
        """Save the page's viewport as a PNG."""
        res = self.call("Page.captureScreenshot", timeout=timeout, format="png")
        path.write_bytes(base64.b64decode(res["data"]))
