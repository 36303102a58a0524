"""A small Chrome DevTools Protocol client for the browser tests: headless Chromium (Debian's
`chromium` package) driven over a WebSocket written with the standard library, so the test
suite needs no browser-automation dependency.

Only what the tests use: navigate, evaluate JavaScript, set the viewport, take screenshots.
Nothing polls: Chromium says on stderr where DevTools listens, a navigation ends with the
page's load event, and a condition on the page is awaited in the page, checked again at each
change of the document.
"""

from __future__ import annotations

import base64
import json
import os
import re
import select
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"


def ensure_chromium() -> str | None:
    """The Chromium executable, installed with apt-get when missing; None (with the reason
    in `why_not`) when it cannot be had."""
    if Path(CHROMIUM).exists():
        return CHROMIUM
    if shutil.which("apt-get") is None:
        return None
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"],
    ):
        result = subprocess.run(command, env=environment, capture_output=True, timeout=900)
        if result.returncode != 0:
            return None
    return CHROMIUM if Path(CHROMIUM).exists() else None


class WebSocket:
    """RFC 6455, client side, text frames only (what CDP speaks)."""

    def __init__(self, url: str) -> None:
        assert url.startswith("ws://")
        hostport, _, path = url[len("ws://") :].partition("/")
        host, _, port = hostport.partition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=60)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        )
        self.sock.sendall(request.encode())
        response = b""
        while b"\r\n\r\n" not in response:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("the browser closed the WebSocket handshake")
            response += chunk
        head, _, self.buffer = response.partition(b"\r\n\r\n")
        if b" 101 " not in head.split(b"\r\n")[0]:
            raise ConnectionError(head.decode(errors="replace"))

    def _read(self, size: int) -> bytes:
        while len(self.buffer) < size:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("the browser closed the WebSocket")
            self.buffer += chunk
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def _frame(self, opcode: int, payload: bytes) -> None:
        header = bytes([0x80 | opcode])
        size = len(payload)
        if size < 126:
            header += bytes([0x80 | size])
        elif size < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack("!H", size)
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", size)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def send(self, text: str) -> None:
        self._frame(0x1, text.encode())

    def receive(self) -> str:
        message = b""
        while True:
            first, second = self._read(2)
            opcode, size = first & 0x0F, second & 0x7F
            if size == 126:
                (size,) = struct.unpack("!H", self._read(2))
            elif size == 127:
                (size,) = struct.unpack("!Q", self._read(8))
            mask = self._read(4) if second & 0x80 else b""
            payload = self._read(size)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode == 0x9:  # ping
                self._frame(0xA, payload)
                continue
            if opcode == 0x8:
                raise ConnectionError("the browser closed the WebSocket")
            message += payload
            if first & 0x80:
                return message.decode()

    def close(self) -> None:
        self.sock.close()


#: Resolves with the value of EXPRESSION once it is truthy, checked now and again at every
#: change of the document (a mutation, or a load such as a frame's), or with a mark of the
#: timeout after TIMEOUT ms. An exception of the expression rejects it.
WAIT_IN_PAGE = """new Promise((resolve, reject) => {
  let observer = null, timer = null;
  const stop = () => {
    if (observer) observer.disconnect();
    clearTimeout(timer);
    document.removeEventListener("load", check, true);
  };
  function check() {
    let value;
    try { value = (EXPRESSION); } catch (error) { stop(); reject(error); return true; }
    if (value) { stop(); resolve(value); return true; }
    return false;
  }
  if (check()) return;
  observer = new MutationObserver(check);
  observer.observe(document, {subtree: true, childList: true, characterData: true,
                              attributes: true});
  document.addEventListener("load", check, true);
  timer = setTimeout(() => { stop(); resolve({"followup-timeout": true}); }, TIMEOUT);
})"""


class Page:
    """One browser tab."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        self.next_id = 0
        #: Events received while waiting for replies: (method, params).
        self.events: deque[tuple[str, dict[str, Any]]] = deque()
        self.call("Page.enable")

    def _receive(self) -> dict[str, Any]:
        message: dict[str, Any] = json.loads(self.ws.receive())
        if "method" in message and "id" not in message:
            self.events.append((message["method"], message.get("params", {})))
        return message

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            reply = self._receive()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply["result"]
                return result

    def wait_event(self, method: str, timeout: float = 30.0) -> dict[str, Any]:
        """The next event `method` (received since the last call to this), as it comes."""
        deadline = time.monotonic() + timeout
        while True:
            while self.events:
                name, params = self.events.popleft()
                if name == method:
                    return params
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {method} event")
            self.ws.sock.settimeout(left)
            try:
                self._receive()
            finally:
                self.ws.sock.settimeout(60)

    def evaluate(self, expression: str) -> Any:
        result = self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30.0) -> Any:
        """The value of `expression` once it is truthy: awaited in the page (WAIT_IN_PAGE).
        The deadline only stops a test that would otherwise hang; nothing asserts how long
        it took."""
        waiting = WAIT_IN_PAGE.replace("TIMEOUT", str(int(timeout * 1000))).replace(
            "EXPRESSION", expression
        )
        value = self.evaluate(waiting)
        if isinstance(value, dict) and value.get("followup-timeout"):
            raise AssertionError(f"never true: {expression}")
        return value

    def viewport(self, width: int, height: int = 900) -> None:
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )

    def goto(self, url: str) -> None:
        self.events.clear()
        navigation = self.call("Page.navigate", url=url)
        if "loaderId" in navigation:
            # A new document (not a change of the fragment only): wait for its load event.
            self.wait_event("Page.loadEventFired")
        self.wait_for(f"location.href === {json.dumps(url)} && document.readyState === 'complete'")

    def screenshot(self, path: Path) -> None:
        """The whole page (beyond the viewport) as PNG."""
        width, height = self.evaluate(
            "[document.documentElement.scrollWidth, document.documentElement.scrollHeight]"
        )
        shot = self.call(
            "Page.captureScreenshot",
            format="png",
            captureBeyondViewport=True,
            clip={"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))


def devtools_port(stderr: int, deadline: float) -> int:
    """The port of "DevTools listening on ws://127.0.0.1:PORT/..." that Chromium writes to
    its stderr (read from the file descriptor) once its endpoint is up."""
    seen = b""
    while (found := re.search(rb"DevTools listening on ws://[^:/]+:(\d+)/", seen)) is None:
        left = deadline - time.monotonic()
        ready, _, _ = select.select([stderr], [], [], max(left, 0))
        chunk = os.read(stderr, 65536) if ready else b""
        if not chunk:
            raise RuntimeError("Chromium did not start its DevTools endpoint")
        seen += chunk
    return int(found.group(1))


@contextmanager
def browser(executable: str) -> Iterator[Page]:
    """One headless Chromium with one tab, closed afterwards."""
    profile = Path(tempfile.mkdtemp(prefix="followup-chromium-"))
    process = subprocess.Popen(
        [
            executable,
            "--headless",
            "--no-sandbox",  # tests may run as root in a container
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            "--mute-audio",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert process.stderr is not None
    # What Chromium writes after the line is read and dropped: a full pipe would stop it.
    drain = threading.Thread(target=process.stderr.read, daemon=True)
    try:
        port = devtools_port(process.stderr.fileno(), deadline=time.monotonic() + 60)
        drain.start()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as reply:
            targets = json.loads(reply.read())
        target = next(t for t in targets if t["type"] == "page")
        ws = WebSocket(target["webSocketDebuggerUrl"])
        try:
            yield Page(ws)
        finally:
            ws.close()
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if drain.is_alive():
            drain.join()
        process.stderr.close()
        shutil.rmtree(profile, ignore_errors=True)
