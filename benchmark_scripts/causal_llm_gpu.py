"""GPU benchmark of the causal-LLM router: train 1 epoch on synthetic labels, then score.

    # the issue's benchmark: 10k labels, Llama-3.2-1B layout, 1 epoch, on one GPU
    python benchmark_scripts/causal_llm_gpu.py
    python benchmark_scripts/causal_llm_gpu.py --base-model /models/Llama-3.2-1B   # real weights
    # smoke run on a CPU (tiny random model): checks the script end to end
    python benchmark_scripts/causal_llm_gpu.py --tiny --n 200

Without --base-model the model has Llama-3.2-1B's layout (16 layers, hidden 2048,
128256-id vocabulary) with random weights and the router's in-code tokenizer: no
download, and the same FLOPs per token as the real model, so speed figures carry over
(the quality figures do not: random weights learn little in one epoch). Tokens are
counted with the tokenizer actually used.

Prints one line per figure and a final JSON line: tokens/s, step time (mean, median),
peak memory (GPU allocator peak on a GPU, process max RSS on a CPU), model load time,
training time, scoring prompts/s and total wall time.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np
import pandas as pd

STRONG, WEAK = "gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"
WORDS = (
    "the a of to and in is for on with as by at from that this which what how why when explain describe write "
    "list compare summarise translate compute solve prove derive estimate design story poem email code python "
    "function error list table river city history market energy protein theorem integral matrix graph network "
    "policy contract climate music garden recipe travel budget planet ocean language model question answer"
).split()
HARD = ["prove rigorously", "derive step by step", "optimise the algorithm", "analyse the edge cases"]


def synthetic_labels(n: int, seed: int = 0) -> pd.DataFrame:
    """`n` labels: n/2 prompts x (strong, weak); 'hard' prompts are the weak model's failures."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range((n + 1) // 2):
        length = int(rng.integers(15, 120))  # words: ~60-500 tokens with the in-code tokenizer
        words = rng.choice(WORDS, size=length).tolist()
        hard = rng.random() < 0.4
        if hard:
            words.insert(int(rng.integers(0, length)), str(rng.choice(HARD)))
        prompt = " ".join(words)
        weak_q = float(rng.random() < (0.2 if hard else 0.85))
        strong_q = float(rng.random() < 0.9)
        rows.append(dict(prompt_id=f"s{i}", prompt=prompt, model=STRONG, quality=strong_q))
        rows.append(dict(prompt_id=f"s{i}", prompt=prompt, model=WEAK, quality=weak_q))
    return pd.DataFrame(rows[:n])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=None, help="labels (default 10000; 200 with --tiny)")
    ap.add_argument("--base-model", default=None, help="HF folder/id or .gguf (default: random Llama-3.2-1B layout)")
    ap.add_argument("--layout", default="llama-3.2-1b", help="random layout when no --base-model")
    ap.add_argument(
        "--tokenizer",
        default=None,
        help="real tokenizer (HF folder, .gguf or smollm2-gguf) for the random layout: real token counts",
    )
    ap.add_argument("--tiny", action="store_true", help="tiny random model: a CPU smoke run")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=None, help="default 16 on GPU, 8 on CPU")
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--finetune", choices=["lora", "full"], default="lora")
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--lora-layers", type=int, default=0, help="LoRA on the top N layers (0 = all, production)")
    ap.add_argument("--gradient-checkpointing", choices=["auto", "on", "off"], default="auto")
    ap.add_argument("--score-prompts", type=int, default=256)
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

    import torch

    from router_tasks.routers.causal_llm.router import CausalLLMRouter

    on_gpu = torch.cuda.is_available()
    random_base = f"random:{args.layout}" + (f":{args.tokenizer}" if args.tokenizer else "")
    base = "tiny" if args.tiny else (args.base_model or random_base)
    n = args.n or (200 if args.tiny else 10_000)
    params = {
        "base_model": base,
        "finetune": args.finetune,
        "lora_r": args.lora_r,
        "lora_layers": args.lora_layers,
        "epochs": args.epochs,
        "batch_size": args.batch_size or (16 if on_gpu else 8),
        "grad_accum": args.grad_accum,
        "max_length": args.max_length,
        "gradient_checkpointing": {"auto": "auto", "on": True, "off": False}[args.gradient_checkpointing],
        "predict_batch_size": 64 if on_gpu else 16,
    }
    if args.lr:
        params["lr"] = args.lr
    elif args.finetune == "full":
        params["lr"] = 2e-5
    device = torch.cuda.get_device_name(0) if on_gpu else f"CPU ({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f})"
    print(f"device: {device}; base: {base}; labels: {n}; params: {json.dumps(params)}", flush=True)
    if not on_gpu and not args.tiny and args.base_model is None:
        print("warning: no GPU: a 1B-class model will take hours on a CPU (use --tiny for a smoke run)", flush=True)

    labels = synthetic_labels(n)
    started = time.time()
    router = CausalLLMRouter([STRONG, WEAK], STRONG, WEAK, params).fit(labels)
    fit_wall = time.time() - started
    st = router.train_stats
    load_s = fit_wall - st["seconds"]

    prompts = labels.drop_duplicates("prompt_id")["prompt"].tolist()[: args.score_prompts]
    t0 = time.time()
    router.predict_quality(prompts)
    score_s = time.time() - t0
    total = time.time() - started

    peak = (
        {"peak_gpu_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
        if on_gpu
        else {"peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}
    )
    out = {
        "device": device,
        "base_model": base,
        "labels": n,
        "epochs": args.epochs,
        "finetune": args.finetune,
        "steps": st["steps"],
        "train_tokens": st["tokens"],
        "train_tokens_per_s": st["tokens_per_s"],
        "step_s_mean": st["step_s_mean"],
        "step_s_median": st["step_s_median"],
        "model_load_s": round(load_s, 1),
        "train_s": st["seconds"],
        "score_prompts": len(prompts),
        "score_prompts_per_s": round(len(prompts) / score_s, 2),
        "total_s": round(total, 1),
        "loss_first_last": [round(router.history[0], 4), round(router.history[-1], 4)],
        **peak,
    }
    for k, v in out.items():
        print(f"{k}: {v}", flush=True)
    print(json.dumps(out), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
