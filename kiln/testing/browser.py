"""Run an exported WebGPU bundle in headless Chromium and read its outputs back.

The bundle's ``index.html`` takes ``?inputs=FILE.json`` and ``?report=URL``: it runs the model
on the given inputs and POSTs ``{"outputs": {name: [numbers]}, "ms": ...}`` (or
``{"error": ...}``) to the report URL. :func:`run_in_browser` serves the bundle directory on
127.0.0.1 with a small HTTP server that also accepts that POST, starts Chromium headless on
the page and returns the outputs as numpy arrays. Chromium's console log (``console.log``
lines appear on its stderr with ``--enable-logging=stderr --v=0``) is kept for error messages.
"""
from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np

from kiln.errors import KilnError, ToolchainError

CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--enable-unsafe-webgpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--enable-logging=stderr",
                  "--v=0"]


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Static files from the bundle directory, plus ``POST /__report`` (the page's result)."""

    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".js": "text/javascript", ".wgsl": "text/plain", ".json": "application/json"}

    def __init__(self, *args, state, extra, **kwargs):
        self.state, self.extra = state, extra
        super().__init__(*args, **kwargs)

    def do_GET(self):  # noqa: N802  (http.server's naming)
        name = self.path.split("?")[0].lstrip("/")
        if name in self.extra:
            body = self.extra[name]
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()

    def do_POST(self):  # noqa: N802
        length = int(self.headers.get("Content-Length", 0))
        data = self.rfile.read(length)
        self.send_response(204)
        self.end_headers()
        if self.path.startswith("/__report"):
            self.state["result"] = json.loads(data)
            self.state["done"].set()

    def log_message(self, *args):  # keep test output quiet
        pass


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if path is None:
        raise ToolchainError("Chromium is not installed (Debian package 'chromium')")
    return path


def run_in_browser(bundle_dir, inputs: dict[str, np.ndarray], timeout: float = 180.0,
                   browser: str | None = None, dims: dict[str, int] | None = None,
                   page: str = "index.html") -> tuple[dict[str, np.ndarray], dict]:
    """Outputs of the bundle's model on ``inputs`` as computed by headless Chromium's WebGPU,
    and the page's report (``ms``: mean run time in the browser, ``log``: Chromium's stderr).
    ``dims`` gives the values of a dynamic model's dims (else the page uses the upper bounds).
    ``page``: another page of the bundle directory that reports the same way (tests)."""
    bundle_dir = Path(bundle_dir)
    table = json.loads((bundle_dir / "manifest.json").read_text())
    data = {k: np.asarray(v).astype(np.float64 if np.asarray(v).dtype.kind == "f" else np.int64)
            .reshape(-1).tolist() for k, v in inputs.items()}
    if dims:
        data["__dims"] = dict(dims)
    payload = json.dumps(data).encode()
    state = {"done": threading.Event(), "result": None}
    handler = partial(_Handler, directory=str(bundle_dir), state=state, extra={"__inputs.json": payload})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    url = f"http://127.0.0.1:{port}/{page}?inputs=/__inputs.json&report=/__report&runs=2"
    with tempfile.TemporaryDirectory(prefix="kiln-chromium-") as profile, \
            tempfile.TemporaryFile(mode="w+") as log:
        env = dict(os.environ)
        env.setdefault("XDG_RUNTIME_DIR", profile)
        proc = subprocess.Popen([browser or chromium_path(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", url],
                                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            finished = state["done"].wait(timeout)
            # the page POSTs its result before Chromium's log has the console line: give the
            # log a moment (a loaded machine delays it) before the browser is killed
            deadline = time.monotonic() + 10
            while finished and time.monotonic() < deadline:
                log.seek(0)
                if "KILN_RESULT" in log.read():
                    break
                time.sleep(0.1)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the browser and the helpers it started
            except ProcessLookupError:
                pass
            proc.wait()
            server.shutdown()
            server.server_close()
        log.seek(0)
        text = log.read()
    if not finished:
        raise ToolchainError(f"Chromium did not report a result within {timeout:.0f} s; its log:\n{text[-4000:]}")
    result = state["result"]
    if "error" in result:
        raise KilnError(f"the bundle failed in Chromium: {result['error']}\n--- Chromium log ---\n{text[-4000:]}")
    outs = {}
    for spec in table["outputs"]:
        shape = [int(d) for d in result["shapes"][spec["name"]]]
        outs[spec["name"]] = np.asarray(result["outputs"][spec["name"]], dtype=np.float64).astype(
            spec["dtype"]).reshape(shape)
    result["log"] = text
    return outs, result


__all__ = ["CHROMIUM_FLAGS", "chromium_path", "run_in_browser"]
