"""Gantt charts of a run (`qcg-pm-report gantt` / `gantt-gaps`, reference 14.2.3, 14.2.4).

matplotlib is an optional extra (`pip install 'qcg-pilotjob[gantt]'`): it is
imported only when a chart is drawn, with the Agg backend, so the rest of the
report tool -- and machines without a display -- never need it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from qcg.pilotjob.governor.perf_report import merged
from qcg.pilotjob.governor.run_reader import ReportError, RunData

FORMATS = {".pdf": "pdf", ".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".svg": "svg"}
MATPLOTLIB_HINT = "pip install matplotlib (or the gantt extra: pip install 'qcg-pilotjob[gantt]')"
_LABELLED_LANES = 64            # above this many cores only the first core of each node is labelled


@dataclass(frozen=True)
class Lane:
    """One core of a chart; times in seconds since the service started."""

    label: str                                  # node:core
    first_of_node: bool
    tasks: list[tuple[float, float, bool]]      # real start, real end, not FAILED
    gaps: list[tuple[float, float]]             # idle stretches between the service start and end


def lanes(run: RunData) -> tuple[list[Lane], float]:
    """Every used core's tasks and idle gaps, and the service runtime (the charts' x range)."""
    svc = run.require_service()
    t0, t1 = svc.start, svc.finish
    out, last_node = [], None
    for node, core, ivs in run.core_intervals():
        gaps, at = [], t0
        for s, e in merged(ivs, t0, t1):
            if s > at:
                gaps.append((at - t0, s - t0))
            at = e
        if t1 > at:
            gaps.append((at - t0, t1 - t0))
        out.append(Lane(f"{node}:{core}", node != last_node, [(s - t0, e - t0, ok) for s, e, ok in ivs], gaps))
        last_node = node
    return out, svc.runtime


def check_output(path: str) -> str:
    """The matplotlib format of `path`, judged before the run is read so a typo costs nothing."""
    fmt = FORMATS.get(os.path.splitext(path)[1].lower())
    if fmt is None:
        raise ReportError(f"{path}: unsupported chart file type; name it *.pdf, *.png or *.jpeg (or *.svg)")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ReportError(f"{path}: its directory {parent} does not exist")
    return fmt


def plot(run: RunData, path: str, gaps: bool = False) -> int:
    """Draw tasks (or, with `gaps`, idle time) per core into `path`; returns the number of bars drawn."""
    fmt = check_output(path)
    try:
        import matplotlib
    except ImportError:
        raise ReportError(f"the {'gantt-gaps' if gaps else 'gantt'} chart needs matplotlib: "
                          f"{MATPLOTLIB_HINT}") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, runtime = lanes(run)
    n = len(rows)
    fig, ax = plt.subplots(figsize=(12, min(max(3.0, 1.5 + 0.22 * n), 150.0)))
    bars = 0
    for y, lane in enumerate(rows):
        if gaps:
            spans = [(s, e - s) for s, e in lane.gaps]
            colors: str | list[str] = "tab:orange"
        else:
            spans = [(s, e - s) for s, e, _ in lane.tasks]
            # alternate shades so back-to-back tasks stay apart; failed tasks in red
            colors = [("tab:red" if not ok else ("tab:blue" if i % 2 == 0 else "tab:cyan"))
                      for i, (_, _, ok) in enumerate(lane.tasks)]
        if spans:
            ax.broken_barh(spans, (y - 0.4, 0.8), facecolors=colors, edgecolor="none")
            bars += len(spans)
    ax.axvline(0.0, color="black", linewidth=0.6)
    ax.axvline(runtime, color="black", linewidth=0.6)
    ax.set_xlim(-0.01 * runtime, runtime * 1.01 if runtime > 0 else 1.0)
    ax.set_ylim(-1, n)
    ax.invert_yaxis()
    ticks = [(y, lane.label) for y, lane in enumerate(rows) if n <= _LABELLED_LANES or lane.first_of_node]
    ax.set_yticks([y for y, _ in ticks], [label for _, label in ticks], fontsize=7 if n > 32 else 9)
    ax.set_xlabel("seconds since the service started")
    ax.set_ylabel("node:core")
    ax.set_title(f"{'idle time' if gaps else 'tasks'} per core ({n} cores used, service ran {runtime:.2f} s)")
    ax.grid(axis="x", linestyle=":", linewidth=0.5)
    fig.tight_layout()
    try:
        fig.savefig(path, format=fmt)
    except OSError as exc:
        raise ReportError(f"{path}: cannot be written: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
    return bars
