import pandas as pd

from router_tasks.data.labels import build_labels
from router_tasks.core.stage import load_table, run_stage
from router_tasks.core.store import ArtifactStore


def _put(store, name, df):
    return run_stage(name, "test", lambda ctx: ctx.write_table(df), config={"rows": df.astype(str).values.tolist()}, store=store)


def test_labels_from_judgements_and_bundled_routellm(local_root):
    store = ArtifactStore(local_root)
    prompts = _put(store, "ingest", pd.DataFrame({"prompt_id": ["a", "b", "c"], "prompt": ["A?", "B?", "C?"], "dataset": "demo"}))
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
