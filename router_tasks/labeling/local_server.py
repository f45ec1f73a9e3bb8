"""Start the bundled SmolLM2 server (`router_tasks.labeling.llm_server`) as a subprocess on a
free port for the life of a `with` block, or share one already running (`TELA_LOCAL_LLM_URL`).

Kept apart from the server module so a client process that only starts the server does
not import its HTTP handler and model code."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

# If set, `local_llm_server()` yields this base URL instead of starting a server: lets a
# long-running server (or one per test session) be shared by several stages.
REUSE_ENV = "TELA_LOCAL_LLM_URL"


def _get_json(url: str, timeout: float = 5.0) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, {}


@contextlib.contextmanager
def local_llm_server(
    *,
    dtype: str = "auto",
    max_batch: int = 8,
    threads: int | None = None,
    startup_timeout_s: float = 900.0,
    extra_args: list[str] | None = None,
) -> Iterator[str]:
    """Start the server as a subprocess on a free 127.0.0.1 port; yield its base URL (…/v1).

    Waits for /health to report the model loaded; stops the server on exit. If the env
    var TELA_LOCAL_LLM_URL is set, yields that URL instead and starts nothing.
    """
    shared = os.environ.get(REUSE_ENV)
    if shared:
        log.info("using the running local LLM server at %s (%s)", shared, REUSE_ENV)
        yield shared.rstrip("/")
        return

    workdir = Path(tempfile.mkdtemp(prefix="tela-llm-"))
    port_file, log_file = workdir / "port", workdir / "server.log"
    env = os.environ.copy()
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    # The subprocess must import this package even when it is not pip-installed.
    pkg_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH")) if p)
    cmd = [
        sys.executable,
        "-m",
        "router_tasks.labeling.llm_server",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--port-file",
        str(port_file),
        "--dtype",
        dtype,
        "--max-batch",
        str(max_batch),
    ]
    if threads:
        cmd += ["--threads", str(threads)]
    cmd += list(extra_args or [])

    def tail() -> str:
        try:
            return log_file.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    logfh = open(log_file, "wb")
    proc = subprocess.Popen(cmd, stdout=logfh, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)
    log.info("starting local LLM server (pid %d)", proc.pid)
    base = None
    try:
        deadline = time.monotonic() + startup_timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"local LLM server exited with code {proc.returncode} while starting:\n{tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"local LLM server not ready after {startup_timeout_s:.0f} s:\n{tail()}")
            if base is None and port_file.exists():
                base = f"http://127.0.0.1:{int(port_file.read_text())}"
            if base is not None:
                try:
                    status, _ = _get_json(f"{base}/health", timeout=2.0)
                except OSError:
                    status = None
                if status == 200:
                    break
            time.sleep(0.25)
        log.info("local LLM server ready at %s/v1", base)
        yield f"{base}/v1"
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        elif base is not None and proc.returncode != 0:  # died while in use: say why
            log.warning("local LLM server exited with code %s:\n%s", proc.returncode, tail())
        logfh.close()
        shutil.rmtree(workdir, ignore_errors=True)  # startup errors carry the log's tail
