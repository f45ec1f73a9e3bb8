"""The Airflow Assets the DAGs share: validated labels (produced by router_pipeline,
scheduling router_retraining) and the champion router (produced by publishing, for
serving DAGs to wait on), and traffic drift (produced by router_drift, scheduling the
labeling of new traffic). Names and URIs live in the library as plain strings."""

from airflow.sdk import Asset

from router_tasks.core import defaults

LABELS_ASSET = Asset(name=defaults.LABELS_ASSET_NAME, uri=defaults.LABELS_ASSET_URI)
ROUTER_ASSET = Asset(name=defaults.ROUTER_ASSET_NAME, uri=defaults.ROUTER_ASSET_URI)
DRIFT_ASSET = Asset(name=defaults.DRIFT_ASSET_NAME, uri=defaults.DRIFT_ASSET_URI)
