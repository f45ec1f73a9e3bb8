"""Entry point of a launched causal-LLM training worker (`launch.launch_command`).

A module of its own: the launcher (imported by `router`) must not import the router
back, and running a module that the routers package already imported with `-m` would
import it twice (once through the package, once as `__main__`).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path


def main(argv=None) -> None:
    """A launched worker: fit on the job folder's labels; rank 0 writes the router files."""
    import pandas as pd

    args = sys.argv[1:] if argv is None else argv
    job = Path(args[0])
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s")
    from router_tasks.routers.causal_llm.router import CausalLLMRouter

    spec = json.loads((job / "job.json").read_text())
    labels = pd.read_parquet(job / "labels.parquet")
    router = CausalLLMRouter(spec["models"], spec["strong_model"], spec["weak_model"], spec["params"]).fit(labels)
    if rank == 0:
        router.train_stats["worker_env"] = {
            k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "WORLD_SIZE", "LOCAL_RANK", "OMP_NUM_THREADS")
        }
        out = job / "out"
        out.mkdir()
        router.save(lambda name, data: (out / name).write_bytes(data))
        (out / "DONE").write_text("ok\n")
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # nobody tears the group down while rank 0 still saves
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
