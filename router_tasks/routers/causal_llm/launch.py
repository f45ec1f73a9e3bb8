"""Where the causal-LLM router runs: one GPU claim per process, and multi-process (DDP) fits.

GPU placement. Airflow's `tela_gpu` pool caps how many GPU tasks run at once but tells a
task nothing about *which* GPU to use, so N tasks on an N-GPU host would all land on
`cuda:0`. Each process that trains or scores a causal-LLM router therefore claims its
GPU(s) with an exclusive `flock` on `<lock dir>/gpu-<id>.lock` (`$TELA_GPU_LOCK_DIR`,
default `/tmp/tela-gpu-locks`); the lock lasts as long as the router object (or the
process: the kernel drops it when the process ends, so a crashed task never leaks a
GPU). Candidates are the GPUs the process sees (its `CUDA_VISIBLE_DEVICES`, if the worker
was started with one), optionally narrowed by the router's `gpus` param.

Multi-process fits. With `num_processes` > 1 the calling process (the train task) claims
that many GPUs, writes the labels and params to a scratch folder and runs
`python -m torch.distributed.run --nproc_per_node N -m router_tasks.routers.causal_llm.worker
FOLDER` with `CUDA_VISIBLE_DEVICES` set to the claimed GPUs (empty on a CPU host: N gloo
processes). Each worker's `Accelerator` sees the torchrun environment and wraps the model
in DDP (nccl on GPUs, gloo on CPUs); rank 0 saves the trained files into the folder; the
calling process loads them and is the only one that writes the train artifact and its
manifest. The same code path trains in-process when `num_processes` is 1.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

WORKER_ENV = "TELA_LAUNCH_WORKER"
LOCK_DIR_ENV = "TELA_GPU_LOCK_DIR"
DEFAULT_LOCK_DIR = os.path.join(tempfile.gettempdir(), "tela-gpu-locks")
#: distributed variables a launch must not inherit from the calling process
_STALE = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
    "ACCELERATE_USE_FSDP",
    "ACCELERATE_USE_DEEPSPEED",
)


def in_worker() -> bool:
    """Whether this process is a worker of a launched multi-process fit."""
    return os.environ.get(WORKER_ENV) == "1"


def parse_gpus(spec) -> list[int] | None:
    """`gpus` param -> GPU indices (as the task process numbers them), None for "auto"."""
    if spec is None or spec == "auto" or spec == "":
        return None
    items = spec if isinstance(spec, (list, tuple)) else str(spec).split(",")
    try:
        out = [int(str(x).strip()) for x in items]
    except ValueError:
        raise ValueError(f"causal_llm router: gpus must be 'auto' or GPU indices such as '0,1', got {spec!r}") from None
    if any(i < 0 for i in out) or len(set(out)) != len(out):
        raise ValueError(f"causal_llm router: gpus must be distinct indices >= 0, got {spec!r}")
    return out


def candidate_gpus(spec, count: int, env=None) -> list[tuple[int, str]]:
    """(index in this process, stable device id) of the GPUs a claim may take.

    The id is the entry of this process's `CUDA_VISIBLE_DEVICES` (a physical index or a
    GPU UUID), else the index itself: it names the lock file and what a launched worker
    is handed, so two tasks started with different `CUDA_VISIBLE_DEVICES` still agree.
    """
    env = os.environ if env is None else env
    visible = env.get("CUDA_VISIBLE_DEVICES")
    ids = [x.strip() for x in visible.split(",") if x.strip()] if visible else [str(i) for i in range(count)]
    ids = ids[:count]
    wanted = parse_gpus(spec)
    if wanted is None:
        return list(enumerate(ids))
    missing = [i for i in wanted if i >= len(ids)]
    if missing:
        raise ValueError(f"causal_llm router: gpus {spec!r} asks for GPU(s) {missing}, this process sees {len(ids)}")
    return [(i, ids[i]) for i in wanted]


#: locks this process holds: device id -> [open lock file, number of claims on it]
_HELD: dict[str, list] = {}


@dataclass
class GpuClaim:
    """GPUs held by this process: `local` indices for torch, `ids` for CUDA_VISIBLE_DEVICES."""

    local: list[int]
    ids: list[str]
    _owned: list = field(default_factory=list, repr=False)

    def release(self) -> None:
        for gid in self._owned:
            entry = _HELD.get(gid)
            if entry is None:
                continue
            entry[1] -= 1
            if entry[1] <= 0:
                entry[0].close()  # closing the file drops its flock
                del _HELD[gid]
        self._owned = []

    def __del__(self):
        self.release()


def _take(held: GpuClaim, local: int, gid: str) -> None:
    _HELD[gid][1] += 1
    held.local.append(local)
    held.ids.append(gid)
    held._owned.append(gid)


def claim_gpus(
    n: int, candidates, *, lock_dir: str | None = None, wait_s: float | None = None, poll_s: float = 2.0
) -> GpuClaim:
    """Lock `n` of `candidates` ((local index, id) pairs) for this process, waiting for free ones.

    `wait_s`: give up with TimeoutError after this long (None: wait; the task's own
    execution_timeout bounds it). The pool should make waiting rare: it only happens
    when more GPU tasks run than GPUs are free (a pool larger than the GPU count, or
    someone else's job on the GPU).

    Within one process claims share: a GPU this process already holds is taken only when
    no other is free, and then shared instead of waited for (a train task that scores
    with a second router object must not wait for itself).
    """
    import fcntl

    candidates = list(candidates)
    if n < 1:
        raise ValueError(f"claim_gpus: n must be >= 1, got {n}")
    if len(candidates) < n:
        raise ValueError(f"causal_llm router: {n} GPU(s) wanted, only {len(candidates)} candidate(s): {candidates}")
    folder = lock_dir or os.environ.get(LOCK_DIR_ENV) or DEFAULT_LOCK_DIR
    os.makedirs(folder, exist_ok=True)
    started = last_note = time.monotonic()
    while True:
        held = GpuClaim([], [])
        for local, gid in candidates:
            if gid in _HELD:
                continue
            f = open(os.path.join(folder, f"gpu-{re.sub(r'[^A-Za-z0-9_.-]', '_', gid)}.lock"), "a+")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                continue
            f.seek(0)
            f.truncate()
            f.write(f"{os.getpid()}\n")
            f.flush()
            _HELD[gid] = [f, 0]
            _take(held, local, gid)
            if len(held.local) == n:
                break
        for local, gid in candidates:  # not enough free ones: share what this process holds
            if len(held.local) == n:
                break
            if gid in _HELD and gid not in held.ids:
                _take(held, local, gid)
        if len(held.local) == n:
            log.info("claimed GPU(s) %s (CUDA ids %s) in %s", held.local, held.ids, folder)
            return held
        held.release()
        now = time.monotonic()
        if wait_s is not None and now - started >= wait_s:
            raise TimeoutError(
                f"no {n} free GPU(s) among {[g for _, g in candidates]} after {wait_s:.0f} s (locks in {folder})"
            )
        if now - last_note >= 60:
            log.info(
                "waiting for %d free GPU(s) among %s (%.0f s so far)", n, [g for _, g in candidates], now - started
            )
            last_note = now
        time.sleep(poll_s)


def launch_env(base_env, n: int, gpu_ids: list[str] | None, *, cpu_threads: int = 1) -> dict:
    """The environment a launched fit's workers get.

    `gpu_ids`: the claimed GPUs (`CUDA_VISIBLE_DEVICES`, so worker rank r sees its GPU
    as cuda:r); None trains on CPUs, with every GPU hidden and `cpu_threads` threads
    per worker.
    """
    env = {k: v for k, v in dict(base_env).items() if k not in _STALE}
    env[WORKER_ENV] = "1"
    if gpu_ids is not None:
        if len(gpu_ids) != n:
            raise ValueError(f"launch_env: {n} processes but {len(gpu_ids)} GPU(s) {gpu_ids}")
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpu_ids)
    else:
        env["CUDA_VISIBLE_DEVICES"] = ""
        env["OMP_NUM_THREADS"] = str(max(1, int(cpu_threads)))
    env["TOKENIZERS_PARALLELISM"] = "false"
    root = str(Path(__file__).resolve().parents[3])  # the workers import this checkout's router_tasks
    env["PYTHONPATH"] = os.pathsep.join(
        [root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != root]
    )
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(n: int, job_dir: str, port: int) -> list[str]:
    """torchrun, one node, `n` workers running `main` (via `worker`) on `job_dir`."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        f"--nproc_per_node={n}",
        "--master_addr=127.0.0.1",
        f"--master_port={port}",
        "-m",
        "router_tasks.routers.causal_llm.worker",
        job_dir,
    ]


def fit_distributed(router, labels):
    """Fit `router` (a CausalLLMRouter, num_processes > 1) in launched workers; load the result."""
    import torch

    n = int(router.params["num_processes"])
    gpu_ids = None
    if router._use_cuda():
        if router._claim is not None and len(router._claim.ids) != n:
            router._claim.release()
            router._claim = None
        if router._claim is None:
            router._claim = claim_gpus(n, candidate_gpus(router.params["gpus"], torch.cuda.device_count()))
        gpu_ids = router._claim.ids
    with tempfile.TemporaryDirectory(prefix="tela-fit-") as job:
        labels.reset_index(drop=True).to_parquet(os.path.join(job, "labels.parquet"), index=False)
        spec = {
            "models": list(router.models),
            "strong_model": router.strong_model,
            "weak_model": router.weak_model,
            "params": dict(router.params),
        }
        Path(job, "job.json").write_text(json.dumps(spec))
        env = launch_env(os.environ, n, gpu_ids)
        cmd = launch_command(n, job, free_port())
        log.info(
            "causal_llm: launching %d training processes on %s: %s",
            n,
            f"GPU(s) {gpu_ids}" if gpu_ids else "CPUs (gloo)",
            " ".join(cmd),
        )
        started = time.time()
        rc = subprocess.run(cmd, env=env).returncode  # the workers' output goes to this task's log
        if rc != 0:
            raise RuntimeError(
                f"causal_llm: the {n}-process fit failed (exit code {rc}); the workers' errors are above"
            )
        out = Path(job, "out")
        if not (out / "DONE").exists():
            raise RuntimeError(f"causal_llm: the {n}-process fit exited 0 but rank 0 wrote no router")
        router._restore(lambda name: (out / name).read_bytes())
        router.train_stats["launch"] = {
            "num_processes": n,
            "cuda_visible_devices": env["CUDA_VISIBLE_DEVICES"],
            "wall_s": round(time.time() - started, 3),
        }
    return router
