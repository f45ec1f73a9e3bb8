"""A router's life after evaluation: publishing the champion, retraining, the run summary.
May import every package below it (`core`, `data`, `labeling`, `routers`, `evaluation`)."""
