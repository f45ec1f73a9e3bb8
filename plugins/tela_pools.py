"""The Airflow pools the DAGs use (`router_tasks.core.defaults.POOLS`), created in the metadata DB.

A task whose pool does not exist is never scheduled (the scheduler only logs "Tasks using
non-existent pool ... will not be scheduled"), so every place that sets up an Airflow DB
runs this: `make airflow-db`, the tests' `airflow_db` fixture and docker-compose's
`airflow-init`. Missing pools are created with the default slots; an existing pool is
left alone, so a size set by an operator (`airflow pools set tela_gpu 2 "..."`) survives.

    python plugins/tela_pools.py     # after `airflow db migrate`
"""

from __future__ import annotations


def ensure_pools(pools: dict | None = None) -> dict[str, int]:
    """Create each missing pool of `pools` (default `defaults.POOLS`); returns name -> slots."""
    from airflow.models.pool import Pool

    from router_tasks.core import defaults

    out = {}
    for name, spec in (defaults.POOLS if pools is None else pools).items():
        pool = Pool.get_pool(name)
        if pool is None:
            pool = Pool.create_or_update_pool(
                name, int(spec["slots"]), spec["description"], bool(spec.get("include_deferred", False))
            )
        out[name] = pool.slots
    return out


if __name__ == "__main__":
    for name, slots in ensure_pools().items():
        print(f"pool {name}: {slots} slots")
