"""A small Chrome DevTools Protocol driver: a real headless Chromium for the dashboard's tests.

No Selenium or Playwright: Chromium is started with ``--remote-debugging-port=0``, says on stderr where
its DevTools WebSocket listens, and we speak CDP (JSON over that WebSocket) with trio-websocket. One
page target, attached with a flat session; every event it sends is kept (``Page.events``) so a test
can look at network requests, console messages and exceptions afterwards.

``CHROMIUM`` is ``$URBAN_ROBOT_CHROMIUM`` or ``/usr/bin/chromium``; ``chromium_or_skip()`` skips a test
without it locally and fails it when ``$CI`` is set (CI installs the Debian package: .ci/run).
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio_websocket

CHROMIUM = os.environ.get("URBAN_ROBOT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = (
    "--headless",
    "--no-sandbox",  # containers and CI runners as root have no user namespaces for the sandbox
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",  # no update checks, no safe-browsing lists: nothing leaves the machine
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--metrics-recording-only",
    "--mute-audio",
    "--password-store=basic",
    "--use-mock-keychain",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)
LISTENING = re.compile(rb"DevTools listening on (ws://\S+)")


def chromium_or_skip() -> str:
    if Path(CHROMIUM).exists():
        return CHROMIUM
    message = f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium; or set URBAN_ROBOT_CHROMIUM)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


class CdpError(Exception):
    """Chromium answered a command with an error, or a script threw."""


class Page:
    """One page target: ``send`` a CDP command, ``evaluate`` JavaScript, keep every event."""

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self.ws = ws
        self.session: str | None = None
        self.events: list[dict[str, Any]] = []  # {"method": ..., "params": ...} in arrival order
        self._ids = itertools.count(1)
        self._waiting: dict[int, tuple[trio.Event, list[dict[str, Any]]]] = {}
        self._arrived = trio.Event()  # set (and replaced) whenever an event arrives

    async def reader(self) -> None:
        while True:
            try:
                message = json.loads(await self.ws.get_message())
            except trio_websocket.ConnectionClosed:
                for done, answer in self._waiting.values():  # no answer is coming: fail whoever waits
                    answer.append({"error": "the browser closed the connection"})
                    done.set()
                return
            if "id" in message:
                event, answer = self._waiting.pop(message["id"])
                answer.append(message)
                event.set()
            else:
                self.events.append(message)
                self._arrived.set()
                self._arrived = trio.Event()

    async def wait_event(self, method: str, since: int = 0) -> dict[str, Any]:
        """The params of the first ``method`` event at index ``since`` or later, waiting for it to arrive."""
        while True:
            for event in self.events[since:]:
                if event["method"] == method:
                    params: dict[str, Any] = event.get("params", {})
                    return params
            since = len(self.events)
            await self._arrived.wait()

    async def send(self, method: str, *, session: bool = True, **params: Any) -> dict[str, Any]:
        ident = next(self._ids)
        command: dict[str, Any] = {"id": ident, "method": method, "params": params}
        if session and self.session is not None:
            command["sessionId"] = self.session
        done, answer = trio.Event(), []
        self._waiting[ident] = (done, answer)
        await self.ws.send_message(json.dumps(command))
        await done.wait()
        if "error" in answer[0]:
            raise CdpError(f"{method}: {answer[0]['error']}")
        result: dict[str, Any] = answer[0]["result"]
        return result

    async def evaluate(self, expression: str) -> Any:
        """The value of ``expression`` (a promise is awaited) as JSON; a script error raises ``CdpError``."""
        result = await self.send(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True, userGesture=True
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise CdpError(details.get("exception", {}).get("description") or details.get("text"))
        return result["result"].get("value")

    async def wait_for(self, condition: str, timeout: float = 10) -> Any:
        """Wait until the JavaScript ``condition`` is truthy, re-checked on every DOM change; its value."""
        script = f"""new Promise((resolve) => {{
            const check = () => {{ const v = ({condition}); if (v) {{ observer.disconnect(); resolve(v); }} }};
            const observer = new MutationObserver(check);
            observer.observe(document, {{subtree: true, childList: true, attributes: true, characterData: true}});
            check();
        }})"""
        with trio.fail_after(timeout):
            return await self.evaluate(script)

    async def navigate(self, url: str) -> None:
        since = len(self.events)
        await self.send("Page.navigate", url=url)
        with trio.fail_after(15):
            await self.wait_event("Page.loadEventFired", since)

    async def screenshot(self, path: Path) -> bytes:
        result = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        png = base64.b64decode(result["data"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
        return png

    def named(self, method: str) -> list[dict[str, Any]]:
        return [e["params"] for e in self.events if e["method"] == method]


@asynccontextmanager
async def open_browser(*, width: int = 1280, height: int = 800, dark: bool = False) -> AsyncIterator[Page]:
    """A headless Chromium with one blank page, its Network, Runtime, Log and Page domains enabled."""
    chromium = chromium_or_skip()
    # Chromium's helper processes may still write to the profile as it closes: leftovers are no failure.
    with tempfile.TemporaryDirectory(prefix="urban-robot-chromium-", ignore_cleanup_errors=True) as profile:
        async with trio.open_nursery() as nursery:
            process = await trio.lowlevel.open_process(
                [chromium, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}", "about:blank"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            try:
                assert process.stderr is not None
                with trio.fail_after(30):
                    url = await _devtools_url(process.stderr)
                nursery.start_soon(_drain, process.stderr)
                async with trio_websocket.open_websocket_url(url, max_message_size=64 * 1024 * 1024) as ws:
                    page = Page(ws)
                    nursery.start_soon(page.reader)
                    target = await page.send("Target.createTarget", url="about:blank")
                    attached = await page.send("Target.attachToTarget", targetId=target["targetId"], flatten=True)
                    page.session = attached["sessionId"]
                    for domain in ("Page", "Runtime", "Network", "Log"):
                        await page.send(f"{domain}.enable")
                    await page.send(
                        "Emulation.setDeviceMetricsOverride",
                        width=width,
                        height=height,
                        deviceScaleFactor=1,
                        mobile=False,
                    )
                    scheme = "dark" if dark else "light"
                    await page.send(
                        "Emulation.setEmulatedMedia", features=[{"name": "prefers-color-scheme", "value": scheme}]
                    )
                    yield page
                    with trio.move_on_after(5):
                        try:
                            await page.send("Browser.close", session=False)  # closes in order, profile and all
                        except CdpError:
                            pass  # it closed before it could answer
                    nursery.cancel_scope.cancel()
            finally:
                with trio.CancelScope(shield=True):
                    process.send_signal(signal.SIGTERM)
                    with trio.move_on_after(5):
                        await process.wait()
                    if process.returncode is None:
                        process.kill()
                        await process.wait()


async def _devtools_url(stderr: trio.abc.ReceiveStream) -> str:
    seen = b""
    while (found := LISTENING.search(seen)) is None:
        chunk = await stderr.receive_some(65536)
        if not chunk:
            raise RuntimeError(f"Chromium exited before it listened: {seen.decode(errors='replace')[-2000:]}")
        seen += chunk
    return found.group(1).decode()


async def _drain(stream: trio.abc.ReceiveStream) -> None:
    """Keep reading Chromium's stderr so a full pipe never blocks it."""
    while await stream.receive_some(65536):
        pass
