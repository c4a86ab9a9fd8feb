"""Run ``bitplan serve`` as a child process and wait until it is ready: one launcher for
``make run`` (service/demo.py), the service bench and the tests, so all three start, time out,
report a failed start and shut down the same way.

The server runs in its own session (process group), so stopping it also ends the local Ray it
started; ``kill`` is SIGKILL to the whole group — a crash, for recovery tests."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerStartError(RuntimeError):
    """The server exited or did not become ready; the message ends with its log's tail."""


class ServerProcess:
    """``cpus``: pin the server (and the local Ray it starts) to these CPUs, so a benchmark's
    load generator can run on the others."""

    def __init__(self, port: int, log: Path, env: dict[str, str] | None = None, cwd: Path | None = None,
                 cpus: set[int] | None = None):
        self.port, self.log, self.env, self.cwd, self.cpus = port, Path(log), env, cwd, cpus
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None

    def _tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def start(self, timeout: float = 180, probe: str = "/readyz") -> "ServerProcess":
        """Start the server and return once ``probe`` answers 200: /readyz (the default) for a
        server that can run jobs, /healthz for one that is up but may report itself not ready."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        cpus = self.cpus
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(self.port),
                                          "--log-level", "warning"], cwd=self.cwd, env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerStartError(f"the server exited with {self.proc.returncode}; {self.log}:\n{self._tail()}")
            try:
                if httpx.get(f"{self.url}{probe}", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        self.kill()
        raise ServerStartError(f"the server was not ready after {timeout:.0f} s; {self.log}:\n{self._tail()}")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait(self) -> None:
        if self.proc:
            self.proc.wait()

    def stop(self, timeout: float = 60) -> None:
        """Graceful: SIGINT (the server drains and marks its jobs), then SIGKILL what is left."""
        if self.running():
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        self._reap()

    def kill(self) -> None:
        """SIGKILL the server and its process group (its local Ray too): a crash."""
        if self.running():
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self._reap()

    def _reap(self) -> None:
        if self.proc:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # stray Ray processes of this server
            except (ProcessLookupError, PermissionError):
                pass
