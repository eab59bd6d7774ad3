"""A tiny Chrome DevTools Protocol client: headless Chromium driven over one websocket."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import websockets

from app.dev.devstack import free_port

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync")


class CDPError(RuntimeError):
    """A protocol error, a page exception or a timeout."""


class Chromium:
    """Headless Chromium in its own process group, with a throw-away profile."""

    def __init__(self, binary: Path = CHROMIUM) -> None:
        if not binary.is_file():
            raise CDPError(f"{binary} is missing: install Chromium (apt-get install -y chromium)")
        self.port = free_port()
        self.profile = Path(tempfile.mkdtemp(prefix="cdp-profile-"))
        self.log_path = self.profile / "chromium.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115  closed in close()
        self.process = subprocess.Popen(
            [str(binary), *FLAGS, f"--user-data-dir={self.profile}",
             f"--remote-debugging-port={self.port}", "about:blank"],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def _http(self, path: str, method: str = "GET") -> Any:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method)
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())

    async def wait_up(self, timeout: float = 30.0) -> None:
        """Until the DevTools HTTP endpoint answers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise CDPError(f"chromium exited ({self.process.returncode}): {self.log_tail()}")
            try:
                await asyncio.to_thread(self._http, "/json/version")
                return
            except OSError:
                await asyncio.sleep(0.2)
        raise CDPError(f"chromium DevTools not up after {timeout:.0f} s: {self.log_tail()}")

    async def new_page(self) -> Page:
        """A new tab, connected."""
        target = await asyncio.to_thread(self._http, "/json/new?about:blank", "PUT")
        page = Page(target["webSocketDebuggerUrl"])
        await page.connect()
        return page

    def log_tail(self, lines: int = 20) -> str:
        """The end of Chromium's own output."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def close(self) -> None:
        """Stop the browser (SIGKILL if it lingers) and remove its profile."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        self._log.close()
        shutil.rmtree(self.profile, ignore_errors=True)


class Page:
    """One tab's CDP session: commands, events, evaluation and polling."""

    def __init__(self, ws_url: str) -> None:
        self.ws_url = ws_url
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._waiters: list[tuple[str, asyncio.Future[dict[str, Any]]]] = []
        #: Console messages and uncaught exceptions, for failure messages.
        self.console: list[str] = []
        self._ws: Any = None
        self._reader: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        """Open the websocket and enable the domains used here."""
        self._ws = await websockets.connect(self.ws_url, max_size=None)
        self._reader = asyncio.create_task(self._read())
        for domain in ("Page", "Runtime", "Network"):
            await self.send(f"{domain}.enable")

    async def close(self) -> None:
        """Close the websocket."""
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._ws is not None:
            await self._ws.close()

    async def send(self, method: str, timeout: float = 30.0, **params: Any) -> dict[str, Any]:
        """Send a command and return its result (``CDPError`` on a protocol error)."""
        ident = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[ident] = future
        await self._ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        try:
            reply = await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(ident, None)
        if "error" in reply:
            raise CDPError(f"{method}: {reply['error']}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    def expect(self, event: str) -> asyncio.Future[dict[str, Any]]:
        """A future for the next ``event``'s params (create it before causing the event)."""
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters.append((event, future))
        return future

    async def set_headers(self, headers: dict[str, str]) -> None:
        """Extra HTTP headers on every request of this tab (fetch and EventSource too)."""
        await self.send("Network.setExtraHTTPHeaders", headers=headers)

    async def navigate(self, url: str, timeout: float = 30.0) -> None:
        """Load ``url`` and wait for its load event; fails on a network error."""
        loaded = self.expect("Page.loadEventFired")
        result = await self.send("Page.navigate", url=url)
        if result.get("errorText"):
            raise CDPError(f"navigate {url}: {result['errorText']}")
        await asyncio.wait_for(loaded, timeout)

    async def evaluate(self, expression: str) -> Any:
        """Evaluate JavaScript (promises awaited) and return its value as JSON data."""
        result = await self.send("Runtime.evaluate", expression=expression,
                                 awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise CDPError(f"{expression!r} raised: {text}")
        return result.get("result", {}).get("value")

    async def wait_for(self, expression: str, timeout: float = 10.0,
                       interval: float = 0.1) -> Any:
        """Poll ``expression`` until it is truthy; ``CDPError`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = await self.evaluate(expression)
            if last:
                return last
            await asyncio.sleep(interval)
        raise CDPError(f"timed out after {timeout:.0f} s waiting for {expression!r} "
                       f"(last: {last!r}); console: {self.console[-10:]}")

    async def _read(self) -> None:
        async for raw in self._ws:
            message = json.loads(raw)
            if "id" in message:
                future = self._pending.get(message["id"])
                if future is not None and not future.done():
                    future.set_result(message)
                continue
            method, params = message.get("method"), message.get("params", {})
            if method == "Runtime.consoleAPICalled":
                args = " ".join(str(a.get("value", a.get("description", ""))) for a in
                                params.get("args", []))
                self.console.append(f"{params.get('type')}: {args}")
            elif method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                text = details.get("exception", {}).get("description") or details.get("text")
                self.console.append(f"exception: {text}")
            elif method == "Network.responseReceived" and params["response"]["status"] >= 400:
                response = params["response"]
                self.console.append(f"http {response['status']}: {response['url']}")
            for waiter in [w for w in self._waiters if w[0] == method]:
                self._waiters.remove(waiter)
                if not waiter[1].done():
                    waiter[1].set_result(params)
