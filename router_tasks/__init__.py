"""Tela Wizard: the library behind the router-training pipeline.

Every stage lives in its own module with one entry function; none imports Airflow, so
the same code runs from the `tela` CLI, from tests and from the DAGs in `dags/`.
"""

__version__ = "0.1.0"
