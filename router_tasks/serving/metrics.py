"""Prometheus counters and histograms for the gateway, in the text exposition format.

The format is small and stable, so a few dozen lines write it
(https://prometheus.io/docs/instrumenting/exposition_formats/). Each `--workers` process
keeps its own counters: a scraper sees the process that answered."""

from __future__ import annotations

import bisect
import threading

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _labels(labels: dict) -> str:
    if not labels:
        return ""
    esc = lambda v: str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')  # noqa: E731
    return "{" + ",".join(f'{k}="{esc(v)}"' for k, v in sorted(labels.items())) + "}"


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self._help: dict[str, tuple[str, str]] = {}
        self._values: dict[str, dict[tuple, float]] = {}
        self._hist: dict[str, dict[tuple, list]] = {}
        self._buckets: dict[str, tuple] = {}

    def _declare(self, name: str, kind: str, help_: str) -> None:
        self._help.setdefault(name, (kind, help_))

    def inc(self, name: str, help_: str, amount: float = 1.0, **labels) -> None:
        with self._lock:
            self._declare(name, "counter", help_)
            key = tuple(sorted(labels.items()))
            series = self._values.setdefault(name, {})
            series[key] = series.get(key, 0.0) + amount

    def set(self, name: str, help_: str, value: float, **labels) -> None:
        with self._lock:
            self._declare(name, "gauge", help_)
            self._values.setdefault(name, {})[tuple(sorted(labels.items()))] = float(value)

    def clear(self, name: str) -> None:
        with self._lock:
            self._values.pop(name, None)

    def observe(self, name: str, help_: str, value: float, buckets: tuple = BUCKETS, **labels) -> None:
        with self._lock:
            self._declare(name, "histogram", help_)
            bounds = self._buckets.setdefault(name, buckets)
            key = tuple(sorted(labels.items()))
            h = self._hist.setdefault(name, {}).setdefault(key, [[0] * len(bounds), 0.0, 0])
            i = bisect.bisect_left(bounds, value)
            if i < len(bounds):
                h[0][i] += 1
            h[1] += value
            h[2] += 1

    def render(self) -> str:
        out = []
        with self._lock:
            for name, (kind, help_) in sorted(self._help.items()):
                out += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}"]
                for key, v in sorted(self._values.get(name, {}).items()):
                    out.append(f"{name}{_labels(dict(key))} {v:g}")
                for key, (counts, total, n) in sorted(self._hist.get(name, {}).items()):
                    labels, cum = dict(key), 0
                    for bound, c in zip(self._buckets[name], counts, strict=False):
                        cum += c
                        out.append(f"{name}_bucket{_labels({**labels, 'le': f'{bound:g}'})} {cum}")
                    out.append(f"{name}_bucket{_labels({**labels, 'le': '+Inf'})} {n}")
                    out += [f"{name}_sum{_labels(labels)} {total:g}", f"{name}_count{_labels(labels)} {n}"]
        return "\n".join(out) + "\n"
