"""Figures of the evaluation: an Agg canvas and the shared finish of a quality-vs-strong-calls plot."""

from __future__ import annotations

import io


def new_axes():
    """(figure, axes) on an Agg canvas: no pyplot global state, safe in a worker process
    with no display, whatever backend another import selected."""
    # matplotlib is heavy: imported when a plot is drawn, not with the evaluation
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 5))
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def finish_png(fig, ax) -> bytes:
    ax.set_xlabel("strong model calls (%)")
    ax.set_xlim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()
