import pandas as pd
import pytest

from router_tasks.lifecycle.publish import CHAMPION_KEY, publish_router, read_champion, rollback_champion
from router_tasks.core.stage import run_stage
from router_tasks.core.store import ArtifactStore


def _router(store, name):
    return run_stage("train", "test", lambda ctx: ctx.write_file("router.json", name.encode()), config={"name": name}, store=store)


def _evaluation(store, apgrs):
    df = pd.DataFrame({"benchmark": list(apgrs), "apgr": list(apgrs.values())})
    return run_stage("evaluate", "test", lambda ctx: ctx.write_table(df), config=apgrs, store=store)


def test_promote_keep_and_rollback(local_root):
    store = ArtifactStore(local_root)
    r1, r2, r3 = (_router(store, n) for n in ("r1", "r2", "r3"))

    d1 = publish_router(r1, _evaluation(store, {"mmlu": 0.5, "gsm8k": 0.6}), artifact_root=local_root)
    assert d1["promoted"] and d1["reason"] == "no champion yet"
    assert d1["score"] == pytest.approx(0.55)

    d_same = publish_router(r1, _evaluation(store, {"mmlu": 0.5, "gsm8k": 0.6}), artifact_root=local_root)
    assert not d_same["promoted"] and "already the champion" in d_same["reason"]

    d2 = publish_router(r2, _evaluation(store, {"mmlu": 0.7, "gsm8k": 0.6}), margin=0.01, artifact_root=local_root)
    assert d2["promoted"] and read_champion(store)["router"]["key"] == r2["key"]

    before = store.read_bytes(CHAMPION_KEY)
    d3 = publish_router(r3, _evaluation(store, {"mmlu": 0.66, "gsm8k": 0.66}), margin=0.02, artifact_root=local_root)
    assert not d3["promoted"] and "does not beat" in d3["reason"]
    assert store.read_bytes(CHAMPION_KEY) == before  # a losing challenger changes nothing
    assert d3["champion_before"]["router"]["key"] == r2["key"]

    back = rollback_champion(local_root)
    assert back["router"]["key"] == r1["key"] == read_champion(store)["router"]["key"]
    assert len(store.list("champion/decisions/")) == 4


def test_unknown_metric_is_a_clear_error(local_root):
    store = ArtifactStore(local_root)
    with pytest.raises(ValueError, match="benchmark 'mt-bench' was not evaluated"):
        publish_router(_router(store, "x"), _evaluation(store, {"mmlu": 0.5}), metric="apgr:mt-bench", artifact_root=local_root)
    assert read_champion(store) is None


def test_nan_metric_is_never_promoted(local_root):
    store = ArtifactStore(local_root)
    d = publish_router(_router(store, "n"), _evaluation(store, {"mmlu": 0.9, "gsm8k": float("nan")}), artifact_root=local_root)
    assert not d["promoted"] and "NaN" in d["reason"]
    assert read_champion(store) is None
