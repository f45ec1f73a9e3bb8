import pandas as pd
import pytest

from router_tasks.core.stage import load_table, read_manifest, run_stage
from router_tasks.core.store import ArtifactStore
from router_tasks.data.labels import build_labels


def _put(store, name, df):
    return run_stage(
        name, "test", lambda ctx: ctx.write_table(df), config={"rows": df.astype(str).values.tolist()}, store=store
    )


def test_labels_from_judgements_and_bundled_routellm(local_root):
    store = ArtifactStore(local_root)
    prompts = _put(
        store, "ingest", pd.DataFrame({"prompt_id": ["a", "b", "c"], "prompt": ["A?", "B?", "C?"], "dataset": "demo"})
    )
    judged = pd.DataFrame(
        {
            "prompt_id": ["a", "b", "c"],
            "model": "smollm2",
            "score": pd.array([None, 4, None], dtype="Int64"),
            "correct": pd.array([True, None, None], dtype="boolean"),
            "failure_reason": [None, None, "no [[n]] verdict"],
        }
    )
    ref = build_labels(prompts, _put(store, "judge", judged), routellm_max_prompts=20, artifact_root=local_root)
    labels = load_table(ref, store)

    own = labels[labels.source == "generated:generated"].set_index("prompt_id")
    assert list(own.index) == ["a", "b"]  # the unparseable verdict is not a label
    assert own.loc["a", "quality"] == 1.0 and own.loc["b", "quality"] == 0.75
    bundled = labels[labels.source.str.startswith("routellm:")]
    assert set(bundled.model) == {"gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"}
    assert bundled.groupby("benchmark").prompt_id.nunique().to_dict() == {"gsm8k": 20, "mmlu": 20}
    assert not labels.duplicated(["prompt_id", "model", "source"]).any()
    from router_tasks.data.routellm import is_eval_holdout

    assert not bundled.prompt_id.map(is_eval_holdout).any()  # evaluation prompts never train


def test_assume_perfect_strong_model_counts_as_five_on_every_prompt(local_root):
    store = ArtifactStore(local_root)
    prompts = _put(store, "ingest", pd.DataFrame({"prompt_id": ["a", "b"], "prompt": ["A?", "B?"], "dataset": "own"}))
    judged = pd.DataFrame(
        {
            "prompt_id": ["a", "b", "a"],
            "model": ["open", "open", "big"],
            "score": pd.array([2, 5, 1], dtype="Int64"),
            "correct": pd.array([None] * 3, dtype="boolean"),
            "failure_reason": [None, None, None],
        }
    )
    judged_ref = _put(store, "judge", judged)
    labelled = load_table(build_labels(prompts, judged_ref, include_routellm=False, artifact_root=local_root), store)
    assert labelled.set_index(["prompt_id", "model"]).loc[("a", "big"), "quality"] == 0.0  # judged like the others

    ref = build_labels(
        prompts,
        judged_ref,
        include_routellm=False,
        strong_quality="assume_perfect",
        strong_model="big",
        artifact_root=local_root,
    )
    labels = load_table(ref, store)
    big = labels[labels.model == "big"].set_index("prompt_id")
    assert sorted(big.index) == ["a", "b"] and (big["quality"] == 1.0).all() and (big["score"] == 5).all()
    assert set(big["source"]) == {"assumed:generated"}
    assert read_manifest(store, ref)["config"]["strong_quality"] == "assume_perfect"
    with pytest.raises(ValueError, match="strong_quality"):
        build_labels(prompts, judged_ref, strong_quality="perfect", artifact_root=local_root)


def test_own_eval_plan_holdout_when_many_crossfit_when_few():
    from router_tasks.data.labels import OWN_HOLDOUT_MIN_PROMPTS, own_eval_plan
    from router_tasks.data.routellm import is_eval_holdout

    def labels(n):
        ids = [f"p{i}" for i in range(n)]
        return pd.DataFrame(
            {
                "prompt_id": ids * 2,
                "prompt": ids * 2,
                "model": ["s"] * n + ["w"] * n,
                "quality": [1.0] * (2 * n),
                "source": "generated:x",
            }
        )

    many = own_eval_plan(labels(OWN_HOLDOUT_MIN_PROMPTS), "s", "w")
    assert many["protocol"] == "holdout"
    assert many["heldout"] == sorted(p for p in (f"p{i}" for i in range(OWN_HOLDOUT_MIN_PROMPTS)) if is_eval_holdout(p))
    few = own_eval_plan(labels(40), "s", "w")
    assert few["protocol"] == "crossfit" and few["heldout"] == [] and few["folds"] >= 2
    none = own_eval_plan(labels(40), "s", "absent")
    assert none["protocol"] is None and "absent" in none["reason"]
