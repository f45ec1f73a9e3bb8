"""A small world for gateway tests (test infrastructure, not product code): a kNN router
trained on our own two models (`acme-large` solves the hard prompts, `acme-small` only the
easy ones), published as champion and calibrated; upstream configs for two scripted
servers; a real Redis server from Debian's `redis-server`."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import time

from conftest import ROUTER_EASY, ROUTER_HARD
from factories import labels_table
from router_tasks.core.stage import run_stage
from router_tasks.core.store import ArtifactStore
from router_tasks.evaluation.calibration import calibrate_router
from router_tasks.serving.config import GatewayConfig, parse_models_arg
from router_tasks.training.train import train_router

LARGE, SMALL = "acme-large", "acme-small"
KEY_ENV = "ACME_KEY"
UP_KEY = "sk-upstream-secret-789"  # the upstreams' key: must never reach a log or an artifact
EASY_Q = "What is 6 + 1?"
HARD_Q = "Prove the Hahn-Banach extension theorem for normed spaces in full rigour."
PRICES = {LARGE: (10.0, 30.0), SMALL: (0.2, 0.6)}


def train_champion(root: str, router_type: str = "knn", params: dict | None = None) -> dict:
    """Train, publish as champion and calibrate (50% strong share) a router on the toy labels."""
    df = labels_table(
        ROUTER_EASY + ROUTER_HARD, lambda _, text: {LARGE: True, SMALL: text not in ROUTER_HARD}, source="test:gateway"
    )
    labels = run_stage(
        "labels_fixture", "1", lambda ctx: ctx.write_table(df), config={"w": "gateway-world"}, store=ArtifactStore(root)
    )
    ref = train_router(
        labels,
        router_type=router_type,
        strong_model=LARGE,
        weak_model=SMALL,
        router_params=params or ({"k": 5} if router_type == "knn" else {}),
        artifact_root=root,
    )
    ArtifactStore(root).write_json("champion/CHAMPION.json", {"router": ref})
    calibrate_router("champion", ROUTER_EASY + ROUTER_HARD, 0.5, artifact_root=root)
    return ref


def models_config(large_url: str, small_url: str, **over) -> list[dict]:
    return [
        {
            "name": name,
            "model": f"{name}-v1",
            "base_url": url,
            "api_key_env": KEY_ENV,
            "price_input_per_m": PRICES[name][0],
            "price_output_per_m": PRICES[name][1],
            "max_retries": over.get("max_retries", 0),
            "timeout_s": over.get("timeout", 5),
        }
        for name, url in ((LARGE, large_url), (SMALL, small_url))
    ]


def gateway_config(root: str, large_url: str, small_url: str, **cfg) -> GatewayConfig:
    return GatewayConfig(
        parse_models_arg(json.dumps(models_config(large_url, small_url))),
        artifact_root=root,
        traffic_flush_s=0.2,
        **cfg,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def redis_server():
    """A real Redis on a free loopback port, nothing saved to disk; yields its URL."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
