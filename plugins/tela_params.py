"""The run settings both training DAGs take (router_pipeline and router_retraining): which
two models a router chooses between and the bundled benchmarks it is evaluated on, so the
two forms in the Airflow UI say the same thing. Defaults live in the library."""

from airflow.sdk import Param

from router_tasks.core import defaults


def model_pair_params(from_loop: bool = False) -> dict[str, Param]:
    """Fresh Param objects each call: a DAG's params are its own, not shared with another DAG.

    `from_loop`: empty by default, meaning "the loop's settings" (the labels' and the
    champion's recorded settings, the Variable): what a scheduled or Asset-triggered run,
    which never gets a conf, must use instead of the demo's pair."""
    empty = " (empty: from the loop's settings: the labels', the champion's, Variable tela_loop_settings)"
    if from_loop:
        return {
            "strong_model": Param(None, type=["null", "string"],
                                  description="the costly model the router falls back to" + empty),
            "weak_model": Param(None, type=["null", "string"],
                                description="the cheap model the router sends easy prompts to" + empty),
            "benchmarks": Param(None, type=["null", "array"], items={"type": "string"},
                                description="bundled benchmarks each trained router is evaluated on (one per line: "
                                            "mmlu, gsm8k, mt-bench)" + empty),
        }
    return {
        "strong_model": Param(defaults.STRONG_MODEL, type="string",
                              description="the costly model the router falls back to: a model name in the labels"),
        "weak_model": Param(defaults.WEAK_MODEL, type="string",
                            description="the cheap model the router sends easy prompts to: a model name in the labels"),
        "benchmarks": Param(defaults.BENCHMARKS, type="array", items={"type": "string"},
                            description="bundled benchmarks each trained router is evaluated on (one per line): "
                                        "mmlu, gsm8k, mt-bench"),
    }
