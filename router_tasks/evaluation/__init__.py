"""How good a router is: metrics, evaluation on benchmarks and on a run's own labels,
cross-fit, calibration and comparison plots. May import `core`, `data` and `routers`."""
