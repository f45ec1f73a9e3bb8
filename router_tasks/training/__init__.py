"""The train stage (`train.py`): fit a router kind from `router_tasks.routers` on a labels
artifact and store it as a train artifact, beside the other stages."""
