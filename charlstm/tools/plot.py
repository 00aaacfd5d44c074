"""`charlstm plot RUN_DIR`: the learning curves of a run, from its metrics.jsonl, as a PNG.

matplotlib is an optional dependency (``pip install 'charlstm[plot]'``); it is imported
only when the command runs, and drawn with the Agg backend through the object-oriented
API, so no window opens and pyplot's global state is left alone.
"""
from __future__ import annotations

import logging
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from charlstm.errors import UserError
from charlstm.files import atomic_write, print_warning, read_json_lines

MISSING_MATPLOTLIB = "plotting needs matplotlib: pip install 'charlstm[plot]'"


@dataclass
class Curves:
    """The points of metrics.jsonl worth drawing, as (step, elapsed seconds, bpc)."""

    train: list = field(default_factory=list)
    val: list = field(default_factory=list)


def _finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_metrics(run_dir: Path, warn=print_warning) -> Curves:
    """Training and validation bpc of the run in ``run_dir``. Lines that are not metrics
    rows (cut off or zero-filled by a crash) are left out, and ``warn`` is given one
    line saying so. Raises UserError when there is no such run or no value to draw."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory")
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise UserError(f"{run_dir} holds no metrics.jsonl; is it a charlstm run directory?")
    log = read_json_lines(path, lambda row: isinstance(row, dict) and _finite_number(row.get("step"))
                          and _finite_number(row.get("elapsed")))
    curves = Curves()
    for row in log.records:
        for key, points in (("train_bpc", curves.train), ("val_bpc", curves.val)):
            if _finite_number(row.get(key)):
                points.append((row["step"], row["elapsed"], row[key]))
    if not curves.train and not curves.val:
        why = f" ({log.skipped_note()})" if log.skipped else ""
        raise UserError(f"{path} holds no bits-per-character values yet{why}; train the run first")
    if log.skipped:
        warn(log.skipped_note())
    return curves


class _Kept(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records = []

    def emit(self, record):
        self.records.append(record)


def agg_figure():
    """matplotlib's (FigureCanvasAgg, Figure), imported so that what it says of its
    settings directory is one note: where that directory (MPLCONFIGDIR, else
    ~/.config/matplotlib) cannot be written (a read-only home, a service account),
    matplotlib logs two long warnings and works from a temporary directory. Its other
    warnings are printed as they are. Raises UserError when matplotlib is missing."""
    logger = logging.getLogger("matplotlib")
    kept, propagate = _Kept(), logger.propagate
    logger.addHandler(kept)
    logger.propagate = False
    try:
        import matplotlib  # noqa: F401  (first: a cached submodule must not hide its absence)
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError(MISSING_MATPLOTLIB) from None
    finally:
        logger.removeHandler(kept)
        logger.propagate = propagate
    noted = False
    for record in kept.records:
        if str(record.msg).startswith("mkdir -p failed"):
            continue  # the note below says it
        if not str(record.msg).startswith("Matplotlib created a temporary"):
            print_warning(record.getMessage())
        elif not noted:  # the settings and the font cache: one note for both
            noted = True
            named = re.search(r"path \((.+?)\)", record.getMessage())
            directory = named.group(1) if named else "its settings directory"
            print(f"Note: matplotlib cannot write {directory}, so it works from a temporary "
                  f"directory and builds its font cache again each time: set MPLCONFIGDIR to a "
                  f"directory you can write to keep it", file=sys.stderr)
    return FigureCanvasAgg, Figure


def draw(curves: Curves, title: str, output: Path) -> None:
    """Two panels, bpc against steps and against elapsed seconds, written as a PNG."""
    FigureCanvasAgg, Figure = agg_figure()
    fig = Figure(figsize=(11, 4.5), dpi=100, constrained_layout=True)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharey=True)
    best = min(curves.val, key=lambda p: p[2]) if curves.val else None
    for ax, x, xlabel in ((axes[0], 0, "step"), (axes[1], 1, "elapsed wall-clock time (s)")):
        if curves.train:
            ax.plot([p[x] for p in curves.train], [p[2] for p in curves.train],
                    color="tab:blue", linewidth=1.2, marker="." if len(curves.train) < 40 else None,
                    label="training")
        if curves.val:
            ax.plot([p[x] for p in curves.val], [p[2] for p in curves.val],
                    color="tab:orange", linewidth=1.5, marker="o", markersize=4,
                    label="validation")
            ax.plot([best[x]], [best[2]], linestyle="none", marker="*", markersize=12,
                    color="tab:red", zorder=3, label=f"best validation {best[2]:.3f} (step {best[0]})")
        ax.set_xlabel(xlabel)
        ax.grid(True, alpha=0.3)
        ax.legend()
    axes[0].set_ylabel("bits per character")
    axes[0].set_title("against training steps")
    axes[1].set_title("against training time")
    axes[1].tick_params(labelleft=True)
    fig.suptitle(title)
    try:
        with atomic_write(output, parents=True) as f:
            fig.savefig(f, format="png")
    except OSError as e:
        raise UserError(f"cannot write {output} ({e.strerror or e}); nothing was written: free "
                        f"space or choose another -o") from None


def plot_run(run_dir, output=None, warn=print_warning) -> Path:
    """Draw the learning curves of the run in ``run_dir`` to ``output`` (default
    RUN_DIR/curve.png) and return its path; ``warn`` is given one line about lines of
    metrics.jsonl left out. Raises UserError as read_metrics and draw do, and for an
    ``output`` that is a checkpoint or a run's file (export.check_output)."""
    from charlstm.model.export import check_output

    run_dir = Path(run_dir)
    curves = read_metrics(run_dir, warn)
    output = Path(output) if output else run_dir / "curve.png"
    check_output(run_dir, output, writer="plot")
    name = run_dir.resolve().name or str(run_dir)
    draw(curves, f"{name}: bits per character", output)
    return output
