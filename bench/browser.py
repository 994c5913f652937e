"""Open a local HTML file in headless Chromium and report what a reader's browser saw.

Used by the report's browser test and to take the screenshot in the docs::

    python -m bench.browser results/quickstart/report.html --screenshot docs/img/quickstart_report.png

Chromium (Debian's ``chromium`` package) is driven over the DevTools protocol on a pipe
(``--remote-debugging-pipe``: JSON messages separated by NUL bytes on file descriptors 3 and 4), so
nothing listens on a port and no client library is needed. It runs with a fresh profile and with
networking features off (no sync, no component updates, no background networking); the page is
``file://``. What comes back: console errors and uncaught exceptions, failed requests, each
``<img>``'s load state, and the number of rows of every table with a ``data-rows`` attribute.
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["ChromiumError", "find_chromium", "inspect_page", "main"]

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "chrome")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
         "--disable-default-apps", "--mute-audio", "--hide-scrollbars")

# Evaluated in the page once it has loaded: image states and table row counts.
_PROBE = """(() => {
  const imgs = Array.from(document.images).map(i => ({src: i.currentSrc.slice(0, 60), alt: i.alt,
      complete: i.complete, width: i.naturalWidth, height: i.naturalHeight}));
  const tables = {};
  for (const t of document.querySelectorAll('table[data-rows]'))
    tables[t.id || t.dataset.rows] = t.tBodies[0] ? t.tBodies[0].rows.length : 0;
  return JSON.stringify({title: document.title, images: imgs, tables: tables,
                         height: document.documentElement.scrollHeight});
})()"""


class ChromiumError(RuntimeError):
    """Chromium is missing, did not start, or did not answer in time."""


def find_chromium() -> str:
    """Path of a Chromium executable (``$CHROMIUM`` first), or raise naming what was searched."""
    env = os.environ.get("CHROMIUM")
    for name in ([env] if env else []) + list(CANDIDATES):
        path = shutil.which(name)
        if path:
            return path
    raise ChromiumError(f"no Chromium found (searched $CHROMIUM and {', '.join(CANDIDATES)} on PATH); "
                        "install Debian's package: apt-get install chromium")


class _Pipe:
    """The DevTools protocol over Chromium's fd 3 (commands in) and fd 4 (replies and events out)."""

    def __init__(self, proc: subprocess.Popen, write_fd: int, read_fd: int, timeout: float) -> None:
        self.proc, self.write_fd, self.read_fd, self.timeout = proc, write_fd, read_fd, timeout
        self.buf, self.next_id, self.events = b"", 0, []

    def _read_message(self, deadline: float) -> dict:
        import select

        while b"\0" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ChromiumError(f"Chromium did not answer within {self.timeout:g} s")
            ready, _, _ = select.select([self.read_fd], [], [], left)
            if ready:
                chunk = os.read(self.read_fd, 1 << 20)
                if not chunk:
                    raise ChromiumError(f"Chromium closed the DevTools pipe (exit code {self.proc.poll()})")
                self.buf += chunk
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)

    def send(self, method: str, session: str | None = None, **params) -> dict:
        self.next_id += 1
        cmd = {"id": self.next_id, "method": method, "params": params}
        if session:
            cmd["sessionId"] = session
        os.write(self.write_fd, json.dumps(cmd).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            msg = self._read_message(deadline)
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise ChromiumError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_event(self, method: str) -> dict:
        deadline = time.monotonic() + self.timeout
        for i, ev in enumerate(self.events):
            if ev.get("method") == method:
                return self.events.pop(i)
        while True:
            msg = self._read_message(deadline)
            if msg.get("method") == method:
                return msg
            self.events.append(msg)


def _console_problems(events: list[dict]) -> tuple[list[str], list[str]]:
    errors, failed = [], []
    for ev in events:
        m, p = ev.get("method"), ev.get("params", {})
        if m == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            errors.append("exception: " + str((d.get("exception") or {}).get("description") or d.get("text")))
        elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            errors.append("console." + p["type"] + ": " + " ".join(str(a.get("value", a.get("description")))
                                                                   for a in p.get("args", [])))
        elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            errors.append("log: " + p["entry"].get("text", ""))
        elif m == "Network.loadingFailed":
            failed.append(f"{p.get('type')}: {p.get('errorText')}")
        elif m == "Network.requestWillBeSent":
            url = p.get("request", {}).get("url", "")
            if not url.startswith(("file:", "data:", "about:")):
                failed.append(f"network request to {url[:100]}")
    return errors, failed


def inspect_page(html: str | Path, screenshot: str | Path | None = None, width: int = 1280, height: int = 900,
                 full_page: bool = False, timeout: float = 60.0, script: str | None = None) -> dict:
    """Load ``html`` in headless Chromium; return what the page did.

    Args:
        html: a local HTML file.
        screenshot: where to write a PNG of the viewport (or of the whole page with ``full_page``).
        width, height: the viewport in CSS pixels.
        full_page: screenshot the whole page height.
        timeout: seconds to wait for any one answer from Chromium.
        script: extra JavaScript evaluated after load; its (JSON-serialisable) value is returned as ``script``.

    Returns:
        ``{"title", "images": [{src, alt, complete, width, height}], "tables": {id: rows},
        "errors": [...], "requests": [...], "script": value}``.
    """
    url = Path(html).resolve().as_uri()
    exe = find_chromium()
    with tempfile.TemporaryDirectory(prefix="scorebench-chromium-") as profile:
        to_chrome_r, to_chrome_w = os.pipe()
        from_chrome_r, from_chrome_w = os.pipe()

        def child_fds() -> None:  # runs in the child: its fd 3 reads commands, fd 4 writes replies
            r, w = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_chrome_r, from_chrome_w))
            os.dup2(r, 3)
            os.dup2(w, 4)

        args = [exe, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
                "--remote-debugging-pipe", "about:blank"]
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                preexec_fn=child_fds, pass_fds=(3, 4, to_chrome_r, from_chrome_w))
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        pipe = _Pipe(proc, to_chrome_w, from_chrome_r, timeout)
        try:
            target = pipe.send("Target.createTarget", url="about:blank")["targetId"]
            session = pipe.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                pipe.send(f"{domain}.enable", session)
            pipe.send("Emulation.setDeviceMetricsOverride", session, width=width, height=height,
                      deviceScaleFactor=1, mobile=False)
            pipe.send("Page.navigate", session, url=url)
            pipe.wait_event("Page.loadEventFired")
            probe = json.loads(pipe.send("Runtime.evaluate", session, expression=_PROBE,
                                         returnByValue=True)["result"]["value"])
            extra = None
            if script is not None:
                res = pipe.send("Runtime.evaluate", session, expression=script, returnByValue=True,
                                awaitPromise=True)
                if "exceptionDetails" in res:
                    raise ChromiumError(f"script failed: {res['exceptionDetails'].get('text')}")
                extra = res["result"].get("value")
            if screenshot is not None:
                params = {"format": "png"}
                if full_page:
                    params.update(captureBeyondViewport=True, clip={"x": 0, "y": 0, "width": width, "scale": 1,
                                                                    "height": probe["height"]})
                data = pipe.send("Page.captureScreenshot", session, **params)["data"]
                Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
                Path(screenshot).write_bytes(base64.b64decode(data))
            pipe.send("Runtime.evaluate", session, expression="0")  # drain events queued so far
            errors, requests = _console_problems([m for m in pipe.events if m.get("sessionId") == session])
            try:
                pipe.send("Browser.close")
            except ChromiumError:
                pass
        finally:
            os.close(to_chrome_w)
            os.close(from_chrome_r)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return {**probe, "errors": errors, "requests": requests, "script": extra}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.browser", description="Check an HTML file in headless Chromium.")
    p.add_argument("html")
    p.add_argument("--screenshot", default=None, help="write a PNG screenshot here")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=900)
    p.add_argument("--full-page", action="store_true")
    args = p.parse_args(argv)
    try:
        seen = inspect_page(args.html, args.screenshot, args.width, args.height, args.full_page)
    except ChromiumError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    broken = [i for i in seen["images"] if not (i["complete"] and i["width"] > 0)]
    print(json.dumps({"title": seen["title"], "images": len(seen["images"]), "broken_images": broken,
                      "tables": seen["tables"], "errors": seen["errors"], "requests": seen["requests"]}, indent=1))
    return 1 if broken or seen["errors"] or seen["requests"] else 0


if __name__ == "__main__":
    sys.exit(main())
