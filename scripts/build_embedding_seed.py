"""Build a packaged seed under router_tasks/data/files/embeddings/: one vector model's vectors
of every bundled benchmark prompt, so the offline demo does not spend minutes computing them.

    .venv/bin/python scripts/build_embedding_seed.py [--model minilm|smollm2-layer15] [--from-store DIR]

`--from-store` reuses an artifact store's embedding cache (e.g. ./artifacts after a run) and
keeps what this run computes there (a killed run resumes). Vectors are stored as float16;
keys are the embedding cache's text hashes; the file's metadata names the model id, and a
seed of another id is ignored when read.
"""

from __future__ import annotations

import argparse
import logging
import os

import numpy as np

from router_tasks.core.store import ArtifactStore
from router_tasks.data import routellm as bm
from router_tasks.routers import embeddings as emb
from router_tasks.routers.vector_cache import shard_bytes


def benchmark_prompts() -> list[str]:
    texts: list[str] = []
    for name in bm.BENCHMARKS:
        texts += bm.load_benchmark(name, bm.STRONG_MODEL, bm.WEAK_MODEL, decontaminate=False)["prompt"].tolist()
    return list(dict.fromkeys(texts))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="minilm", choices=sorted(emb.EMBEDDING_MODELS))
    ap.add_argument("--from-store")
    ap.add_argument("--out", help="default: the model's packaged seed file")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")  # progress of long builds
    model = emb.embedding_model(args.model)
    texts = benchmark_prompts()
    store = ArtifactStore(args.from_store) if args.from_store else None
    # from the model (and the given store), not from an old seed
    vectors = emb.Embedder(store, model=model, use_seed=False)(texts)
    out = args.out or model.seed_file
    os.makedirs(os.path.dirname(out), exist_ok=True)
    data = shard_bytes([emb.text_key(t) for t in texts], vectors, np.float16, {"model_id": model.model_id})
    with open(out, "wb") as f:
        f.write(data)
    print(f"{len(texts)} vectors of {model.model_id} -> {out} ({len(data) / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
