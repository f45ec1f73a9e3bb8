"""Build router_tasks/data/files/embeddings/seed.parquet: MiniLM vectors of every bundled
benchmark prompt, so the offline demo does not spend minutes re-embedding them.

    .venv/bin/python scripts/build_embedding_seed.py [--from-store DIR]

`--from-store` reuses an artifact store's embedding cache (e.g. ./artifacts after a run).
Vectors are stored as float16; keys are the embedding cache's text hashes.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from router_tasks.data import routellm as bm
from router_tasks.routers import embeddings as emb
from router_tasks.core.store import ArtifactStore


def benchmark_prompts() -> list[str]:
    texts: list[str] = []
    for name in bm.BENCHMARKS:
        texts += bm.load_benchmark(name, bm.STRONG_MODEL, bm.WEAK_MODEL, decontaminate=False)["prompt"].tolist()
    return list(dict.fromkeys(texts))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--from-store")
    ap.add_argument("--out", default=emb.SEED_FILE)
    args = ap.parse_args()
    emb._seed_loaded = True  # build from the model (and the given store), not from an old seed
    texts = benchmark_prompts()
    store = ArtifactStore(args.from_store) if args.from_store else None
    vectors = emb.Embedder(store)(texts)
    keys = [emb.text_key(t) for t in texts]
    flat = pa.array(vectors.astype(np.float16).reshape(-1))
    table = pa.table(
        {"text_sha256": pa.array(keys, pa.string()), "embedding": pa.FixedSizeListArray.from_arrays(flat, emb.EMBED_DIM)},
        metadata={"model_id": emb.MODEL_ID},
    )
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    pq.write_table(table, args.out, compression="zstd")
    print(f"{len(keys)} vectors -> {args.out} ({os.path.getsize(args.out) / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
