"""A `clipkit serve` subprocess on a free loopback port, for end-to-end tests and the load-test script.

    with ServerProcess(["--config", "configs/demo.yaml"], api_key="secret") as srv:
        httpx.get(srv.url + "/v1/info", headers={"X-API-Key": "secret"})

An API key goes to the server in CLIPKIT_API_KEY, never on its command line (which `ps` shows to every user).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Optional, Sequence


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """Starts `clipkit serve ARGS --host 127.0.0.1 --port <free>`; `wait_ready` polls /readyz.

    api_key: required on /v1/*, passed in the environment. prelude: Python code the server process runs before
    the CLI (tests use it to make the model slow or stuck).
    """

    def __init__(self, args: Sequence[str], env: Optional[dict[str, str]] = None, startup_timeout: float = 180.0,
                 api_key: Optional[str] = None, prelude: str = ""):
        if any(a == "--api-key" or a.startswith("--api-key=") for a in args):
            raise ValueError("pass the key as ServerProcess(api_key=...), not --api-key: `ps` shows command lines")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [sys.executable, "-c", f"{prelude}\nfrom toolkit.cli import main; main()", "serve", *args,
                     "--host", "127.0.0.1", "--port", str(self.port)]
        self.env = {**os.environ, **(env or {}), **({"CLIPKIT_API_KEY": api_key} if api_key else {})}
        self.startup_timeout = startup_timeout
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> "ServerProcess":
        self.proc = subprocess.Popen(self.args, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        return self

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def wait_ready(self) -> "ServerProcess":
        import httpx

        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()[-3000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server not ready after {self.startup_timeout}s:\n{self.output()[-3000:]}")

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait; SIGKILL if it hangs. Returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def __enter__(self) -> "ServerProcess":
        return self.start().wait_ready()

    def __exit__(self, *exc) -> None:
        self.terminate()
        self.log.close()
