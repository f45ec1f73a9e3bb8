"""What one labeling part reads from the request cache as the run grows: 10k, 100k, 1M prompts.

    .venv/bin/python benchmark_scripts/request_cache_scale.py                   # 10k and 100k
    .venv/bin/python benchmark_scripts/request_cache_scale.py --prompts 10000 100000 1000000

For each size N the cache of one endpoint is filled as a run of N prompts in shards of
--shard-size would leave it (one segment per part flush of --flush-every replies, in the
partition of the part's shard, replies of --answer-chars characters). Then a fresh part
process of one shard looks up every reply of its shard through `RequestCache.get`, as
`ask_all` does: it prints the files and bytes it read, the lookup time, and its peak RSS.
With the cache partitioned by shard those stay flat as N grows at a fixed shard size;
reading the whole cache (the layout before partitions) grows with N: printed beside it
as "whole cache" for the ratio. No requests are sent: this isolates the read path that
the full `labeling_scale.py` run exercises end to end.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _fill(root: str, n: int, shard_size: int, flush_every: int, answer_chars: int) -> int:

    from router_tasks.core.prompts import prompt_id
    from router_tasks.data.ingest import shard_of
    from router_tasks.labeling.request_cache import RequestCache, partition_name

    shards = max(1, n // shard_size)
    cache = RequestCache(_store(root), base_url="http://bench/v1", model="m")
    by_shard: dict[int, list[str]] = {}
    for i in range(n):
        pid = prompt_id(f"prompt {i}")
        by_shard.setdefault(shard_of(pid, shards), []).append(pid)
    import base64
    import os

    for s, pids in by_shard.items():
        folder = f"{cache.prefix}/{partition_name((shards, s))}"
        for lo in range(0, len(pids), flush_every):
            rows = [
                {
                    "key": f"req-{p}",
                    "answer": base64.b64encode(os.urandom(answer_chars * 3 // 4)).decode(),
                    "finish_reason": "stop",
                    "input_tokens": 10,
                    "output_tokens": 20,
                    "created_at": None,
                }
                for p in pids[lo : lo + flush_every]
            ]
            cache._write(folder, rows, kind="seg")
        # a compacted partition, as a reader past COMPACT_AFTER segments leaves it
        RequestCache(_store(root), base_url="http://bench/v1", model="m").compact((shards, s))
    return shards


def _store(root):
    from router_tasks.core.store import ArtifactStore

    return ArtifactStore(root)


def _part(root: str, n: int, shards: int, shard: int, whole: bool) -> dict:
    from router_tasks.core.prompts import prompt_id
    from router_tasks.data.ingest import shard_of
    from router_tasks.labeling.request_cache import RequestCache

    keys = [f"req-{p}" for i in range(n) if shard_of(p := prompt_id(f"prompt {i}"), shards) == shard]
    store = _store(root)
    t0 = time.monotonic()
    cache = RequestCache(store, base_url="http://bench/v1", model="m")
    part = None if whole else (shards, shard)
    if whole:  # the layout before partitions: every part loaded every segment of the endpoint
        cache.entries(None)
    hits = sum(cache.get(k, part) is not None for k in keys)
    took = time.monotonic() - t0
    rss = (
        next(
            int(line.split()[1])
            for line in Path("/proc/self/status").read_text().splitlines()
            if line.startswith("VmHWM:")
        )
        / 1024
    )
    return {
        "keys": len(keys),
        "hits": hits,
        "files_read": cache.files_read,
        "bytes_read": store.bytes_read,
        "lookup_s": round(took, 3),
        "peak_rss_mb": round(rss, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--shard-size", type=int, default=5_000)
    ap.add_argument("--flush-every", type=int, default=50)
    ap.add_argument("--answer-chars", type=int, default=600)
    args = ap.parse_args()
    out = []
    ctx = mp.get_context("spawn")
    for n in args.prompts:
        with tempfile.TemporaryDirectory(prefix="tela-cache-scale-") as tmp:
            t0 = time.monotonic()
            shards = _fill(tmp, n, args.shard_size, args.flush_every, args.answer_chars)
            fill_s = time.monotonic() - t0
            row = {"prompts": n, "shards": shards, "fill_s": round(fill_s, 1)}
            for whole in (False, True):
                with cf.ProcessPoolExecutor(1, mp_context=ctx) as pool:
                    row["whole_cache" if whole else "own_partition"] = pool.submit(
                        _part, tmp, n, shards, 0, whole
                    ).result()
            print(json.dumps(row), flush=True)
            out.append(row)
    print(
        "| prompts | shards | part reads (files, MB) | lookup s | peak RSS MB | "
        "whole cache (files, MB) | whole-cache RSS MB |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in out:
        o, w = r["own_partition"], r["whole_cache"]
        print(
            f"| {r['prompts']:,} | {r['shards']} | {o['files_read']}, {o['bytes_read'] / 1e6:.2f} | {o['lookup_s']} | "
            f"{o['peak_rss_mb']} | {w['files_read']}, {w['bytes_read'] / 1e6:.2f} | {w['peak_rss_mb']} |"
        )


if __name__ == "__main__":
    main()
