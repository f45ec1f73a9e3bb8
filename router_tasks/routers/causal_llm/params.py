"""The causal-LLM router's parameters and the values its "auto" params take on a device."""

from __future__ import annotations

import math

from router_tasks.routers.causal_llm.base_models import SMOLLM2_GGUF

# "auto" params resolve by device when the base model is loaded (`device_defaults`):
# CPU_DEFAULTS keep the CPU demo short enough to fine-tune on a CPU; GPU_DEFAULTS are the
# production setting.
CPU_DEFAULTS = {"lora_layers": 8, "max_length": 160, "batch_size": 8, "predict_batch_size": 16}
GPU_DEFAULTS = {"lora_layers": 0, "max_length": 512}  # batch sizes: from the free GPU memory
AUTO_INT_PARAMS = ("lora_layers", "max_length", "batch_size", "predict_batch_size")
DEFAULTS = {
    "base_model": SMOLLM2_GGUF,
    "finetune": "lora",  # "lora" | "full"
    "lora_r": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.05,
    # > 0: LoRA on the top N transformer layers only (0 = every layer). Backward then
    # stops at the lowest adapted layer. "auto": 8 on a CPU, 0 (all) on a GPU.
    "lora_layers": "auto",
    "epochs": 1,
    "max_steps": 0,  # > 0: stop after this many optimizer steps (overrides epochs)
    "lr": 0.0005,  # LoRA; use ~2e-5 for "full"
    "weight_decay": 0.0,
    "warmup_ratio": 0.05,
    # the global batch (split over `num_processes`); "auto": 8 on a CPU, by memory on a GPU
    "batch_size": "auto",
    "grad_accum": 1,
    # tokens per example (the request is cut to fit); "auto": 160 on a CPU, 512 on a GPU
    "max_length": "auto",
    "rebalance": "class_weights",  # "class_weights" | "resample" | "none"
    "max_class_weight": 10.0,
    "predict_batch_size": "auto",  # "auto": 16 on a CPU, by memory on a GPU
    "device": "auto",  # "auto" (GPU when present) | "cpu" | "cuda"
    "dtype": "auto",  # "auto" (bf16 base on GPU, fp32 on CPU) | "float32" | "bfloat16"
    "gradient_checkpointing": "auto",  # "auto" (on GPU) | true | false
    "prompt_format": "auto",  # "auto" (chat template when the tokenizer has one) | "chat" | "plain"
    # training processes: > 1 runs a torch.distributed job (DDP; one GPU each, or gloo
    # processes on a CPU); 1 trains in the calling process
    "num_processes": 1,
    # GPUs this router may claim: "auto" (every visible one) or indices such as "0,1"
    # (numbered as the task process sees them)
    "gpus": "auto",
    # CPU threads for torch while this router trains/scores. 0 = auto: the cores the
    # 1-minute load average leaves idle (at least 1), and 1 for the "tiny" base. On a busy
    # machine an extra thread spin-waits for a core someone else holds, which slows every
    # step by orders of magnitude.
    "cpu_threads": 0,
    "seed": 0,
}


def auto_batch_size(config, max_length: int, free_bytes: int, weight_bytes: int, *, train: bool = True) -> int:
    """A per-device batch that fits `free_bytes` of GPU memory (power of two, 1..64).

    Estimate per example in bf16 with gradient checkpointing: every layer's input kept
    for the backward pass, plus one layer's attention and MLP activations recomputed at
    a time, plus the embeddings; scoring keeps one layer's activations only. Half the
    memory left after the weights (and AdamW state, small for LoRA) is the budget, so
    the allocator's fragmentation and the CUDA context have room.
    """
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    h = int(text.hidden_size)
    layers = int(text.num_hidden_layers)
    inter = int(getattr(text, "intermediate_size", 4 * h))
    if train:
        per_example = max_length * 2 * (h * (layers + 12) + inter * 4)
    else:
        per_example = max_length * 2 * (h * 8 + inter * 3)
    budget = 0.5 * max(0, free_bytes - weight_bytes)
    n = int(budget // max(1, per_example))
    return int(min(64 if train else 256, max(1, 2 ** int(math.log2(n)) if n >= 1 else 1)))


def device_defaults(device_type: str, config=None, free_bytes: int = 0, weight_bytes: int = 0, world: int = 1) -> dict:
    """Values of the "auto" params on `device_type` ("cpu" or "cuda"); see the module doc."""
    if device_type != "cuda":
        return dict(CPU_DEFAULTS)
    out = dict(GPU_DEFAULTS)
    per_device = auto_batch_size(config, out["max_length"], free_bytes, weight_bytes)
    out["batch_size"] = per_device * max(1, world)
    out["predict_batch_size"] = auto_batch_size(config, out["max_length"], free_bytes, weight_bytes, train=False)
    return out
