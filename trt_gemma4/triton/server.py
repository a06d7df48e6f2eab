"""Start and stop a real tritonserver on a model repository, bound to 127.0.0.1 on free ports.

The binary is the first of: $TRT_GEMMA4_TRITONSERVER; bin/tritonserver under $TRT_GEMMA4_TRITON_HOME or the
source tree's .cache/tritonserver (what scripts/install_tritonserver.sh writes: Triton 2.51 on the CPU from the
nvidia-pytriton wheel, with a wrapper that sets the library path the python backend stub needs); `tritonserver`
on PATH (the NGC container).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

from trt_gemma4.errors import Gemma4Error, MissingToolError

LOOPBACK = "127.0.0.1"


class ServerError(Gemma4Error):
    """tritonserver did not start, or a model did not load; the message carries the end of its log."""


def find_tritonserver() -> str | None:
    """Path of the tritonserver to use, or None if none is installed."""
    env = os.environ.get("TRT_GEMMA4_TRITONSERVER")
    if env:
        return env if Path(env).is_file() else None
    homes = []
    if os.environ.get("TRT_GEMMA4_TRITON_HOME"):
        homes.append(Path(os.environ["TRT_GEMMA4_TRITON_HOME"]))
    homes.append(Path(__file__).resolve().parents[2] / ".cache" / "tritonserver")
    for h in homes:
        if (h / "bin" / "tritonserver").is_file():
            return str(h / "bin" / "tritonserver")
    return shutil.which("tritonserver")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 1.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


@dataclass
class TritonServer:
    """A running tritonserver; use `start()` as a context manager, or call stop()."""

    process: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int
    metrics_port: int
    log_path: Path
    shm_prefix: str

    @property
    def http_url(self) -> str:
        return f"{LOOPBACK}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{LOOPBACK}:{self.grpc_port}"

    def alive(self) -> bool:
        return self.process.poll() is None

    def ready(self) -> bool:
        return _get(f"http://{self.http_url}/v2/health/ready") == 200

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait for in-flight requests (the server's exit timeout), then SIGKILL; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for f in Path("/dev/shm").glob(f"{self.shm_prefix}*"):  # left behind only by a killed server
            f.unlink(missing_ok=True)
        return self.process.returncode

    def __enter__(self) -> TritonServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start(
    model_repository: str | Path,
    *,
    binary: str | None = None,
    log_path: str | Path | None = None,
    ready_timeout: float = 120.0,
    exit_timeout: int = 5,
    extra_args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> TritonServer:
    """Launch tritonserver on `model_repository` and wait until it reports ready (every model loaded)."""
    binary = binary or find_tritonserver()
    if not binary:
        raise MissingToolError(
            "tritonserver is not installed: run scripts/install_tritonserver.sh (CPU server from the "
            "nvidia-pytriton wheel) or set TRT_GEMMA4_TRITONSERVER"
        )
    repo = Path(model_repository).resolve()
    log = Path(log_path) if log_path else Path(tempfile.mkdtemp(prefix="tritonserver-")) / "tritonserver.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    shm_prefix = f"trt_gemma4_{uuid.uuid4().hex[:8]}_"
    http, grpc, metrics = free_port(), free_port(), free_port()
    cmd = [
        binary,
        f"--model-repository={repo}",
        f"--http-address={LOOPBACK}",
        f"--grpc-address={LOOPBACK}",
        f"--metrics-address={LOOPBACK}",
        f"--http-port={http}",
        f"--grpc-port={grpc}",
        f"--metrics-port={metrics}",
        f"--exit-timeout-secs={exit_timeout}",
        f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
        *extra_args,
    ]
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    server = TritonServer(proc, http, grpc, metrics, log, shm_prefix)
    deadline = time.monotonic() + ready_timeout
    while not server.ready():
        if not server.alive():
            raise ServerError(f"tritonserver exited with code {proc.returncode}; log {log}:\n{server.log_tail()}")
        if time.monotonic() > deadline:
            server.stop()
            raise ServerError(f"tritonserver not ready after {ready_timeout:.0f} s; log {log}:\n{server.log_tail()}")
        time.sleep(0.25)
    return server
