"""The causal-LLM router's training loop: cross-entropy over the five label-token logits.

The loop owns the optimisation only (AdamW, linear warm-up then decay, gradient
accumulation, class weights or resampling, DDP through accelerate when launched as
several processes); the router prepares the model and the token ids and keeps the result.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from router_tasks.routers.causal_llm.labels import class_weights

log = logging.getLogger(__name__)


@dataclass
class TrainedModel:
    model: object  # the fine-tuned (unwrapped) causal LM
    device: object  # the torch device it ended on
    history: list[float]  # mean training loss per tenth of the run
    stats: dict


def train_label_rows(
    model, seqs: list[list[int]], classes: np.ndarray, p: dict, effective: dict, device, label_logits: Callable
) -> TrainedModel:
    """Fine-tune `model` so that `label_logits(model, seqs, device)` predicts `classes` (0..4).

    `p`: the router's params; `effective`: the values its "auto" params took on `device`.
    """
    import torch
    from accelerate import Accelerator
    from torch.nn import functional as F

    on_gpu = device.type == "cuda"
    gc = effective["gradient_checkpointing"]
    if gc:
        # transformers 5 renamed it activation checkpointing (the old name warns)
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    n = len(seqs)
    weights = class_weights(classes, float(p["max_class_weight"])) if p["rebalance"] == "class_weights" else np.ones(5)
    bs, accum = int(effective["batch_size"]), int(p["grad_accum"])
    steps_per_epoch = math.ceil(n / (bs * accum))
    total = steps_per_epoch * int(p["epochs"])
    if int(p["max_steps"]) > 0:
        total = int(p["max_steps"])

    # Under torch.distributed.run (see `launch`) this is DDP: nccl on GPUs,
    # gloo on CPUs; otherwise a single process on `device`.
    accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision="no")
    trainable = [t for t in model.parameters() if t.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=float(p["lr"]), weight_decay=float(p["weight_decay"]))
    warmup = max(1, int(total * float(p["warmup_ratio"])))
    # linear warm-up, then linear decay to zero at the last step
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else max(0.0, (total - s) / max(1, total - warmup))
    )
    model, opt = accelerator.prepare(model, opt)
    if accelerator.num_processes > 1:
        device = accelerator.device
    w_t = torch.tensor(weights, dtype=torch.float32, device=device)
    y_all = torch.from_numpy(classes)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if on_gpu and p["finetune"] == "full" else contextlib.nullcontext()
    )

    rng = np.random.default_rng(int(p["seed"]))
    rank, world = accelerator.process_index, accelerator.num_processes
    losses: list[float] = []
    step_times: list[float] = []
    n_tokens = 0
    started = time.time()
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    with torch.random.fork_rng(devices=[]):  # dropout draws stay out of the caller's RNG
        torch.manual_seed(int(p["seed"]))
        model.train()
        step = 0
        order: list[int] = []
        while step < total:
            if len(order) < bs * accum:
                if p["rebalance"] == "resample":
                    prob = 1.0 / np.bincount(classes, minlength=5)[classes]
                    order += rng.choice(n, size=n, replace=True, p=prob / prob.sum()).tolist()
                else:
                    order += rng.permutation(n).tolist()
            t0 = time.time()
            for _micro in range(accum):
                # `bs` is the global batch: every rank draws the same chunk (same seed)
                # and takes its share, so N processes step exactly like one
                chunk = order[:bs]
                order = order[bs:]
                idx = chunk[rank::world]
                share = 1.0 if idx else 0.0  # a rank without examples still joins the all-reduce
                idx = idx or chunk[:1]
                with autocast:
                    logits = label_logits(model, [seqs[i] for i in idx], device)
                y = y_all[idx].to(device)
                # the weighted mean over the whole chunk: DDP averages the ranks' gradients,
                # so each rank's weighted sum is scaled by world / (the chunk's weight sum)
                chunk_w = float(weights[classes[chunk]].sum())
                per = F.cross_entropy(logits, y, weight=w_t, reduction="sum")
                loss = per * (share * world / (chunk_w * accum))
                accelerator.backward(loss)
                shown = accelerator.reduce(loss.detach(), "mean") if world > 1 else loss.detach()
                losses.append(float(shown.item()) * accum)
                n_tokens += sum(len(seqs[i]) for i in chunk)
            accelerator.clip_grad_norm_(trainable, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            step_times.append(time.time() - t0)
            if step == 1 or step % max(1, total // 10) == 0 or step == total:
                log.info(
                    "causal_llm step %d/%d: loss %.4f (%.1f s)",
                    step,
                    total,
                    np.mean(losses[-accum * 10 :]),
                    time.time() - started,
                )
        model.eval()
    model = accelerator.unwrap_model(model)
    if gc:
        disable = getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable
        disable()
    chunks = np.array_split(np.asarray(losses), min(10, len(losses)))
    history = [float(c.mean()) for c in chunks if len(c)]
    elapsed = time.time() - started
    stats = {
        "examples": n,
        "steps": total,
        "seconds": round(elapsed, 3),
        "tokens": int(n_tokens),
        "tokens_per_s": round(n_tokens / elapsed, 1) if elapsed > 0 else None,
        "step_s_mean": round(float(np.mean(step_times)), 4),
        "step_s_median": round(float(np.median(step_times)), 4),
        "peak_gpu_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if on_gpu else None,
        "device": str(device),
        "class_counts": np.bincount(classes, minlength=5).tolist(),
        "class_weights": [round(float(x), 4) for x in weights],
        "effective_params": dict(effective),
        "world_size": world,
        "distributed": str(accelerator.distributed_type).split(".")[-1],
        "backend": getattr(accelerator.state, "backend", None),
    }
    return TrainedModel(model, device, history, stats)
