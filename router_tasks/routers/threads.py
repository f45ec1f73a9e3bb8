"""Torch CPU threads for a router's work (shared by the routers that run torch)."""

from __future__ import annotations


def torch_threads(cpu_threads: int, on_gpu: bool, minimum_only: bool = False):
    """Context manager: torch's CPU thread count for a router's work, then restored.

    `cpu_threads` > 0 is used as given. Otherwise, on a GPU nothing changes; on the CPU it
    is the cores the 1-minute load average leaves idle (at least 1): two threads on two
    shared cores thrash (a training step went from 0.07 s to 3 s). `minimum_only` forces
    one thread (tiny test models, where threads cost more than they give).
    """
    import contextlib
    import os

    import torch

    n = int(cpu_threads)
    if n <= 0 and on_gpu:
        return contextlib.nullcontext()
    if n <= 0:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        n = 1 if minimum_only else max(1, min(torch.get_num_threads(), int(cores - busy + 0.5)))

    @contextlib.contextmanager
    def ctx():
        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    return ctx()
