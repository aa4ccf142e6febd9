"""Pictures of an evaluation sweep: Dice against support size or ensemble count, one line per class and, with
in-context checks (`useg evaluate --task`), per task kind: the same colour per class, solid for the normal task,
dashed (square markers) for inverted, dotted (triangles) for edges, named in the legend."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from useg.apply.outputs import Written, write_keeping_earlier
from useg.data.task_kinds import EDGES, INVERTED, NORMAL
from useg.viz import figure_png

SUPPORT_SWEEP_PICTURE = "evaluation_support_sweep.png"
ENSEMBLE_SWEEP_PICTURE = "evaluation_ensemble_sweep.png"


LINE_STYLES = {NORMAL: "-", INVERTED: "--", EDGES: ":"}
MARKERS = {NORMAL: "o", INVERTED: "s", EDGES: "^"}


def curves(points: list, axis: str, kind: str = NORMAL) -> dict[str, list[tuple[int, float, float]]]:
    """Per class, (x, mean Dice, std over targets) of one task kind along `axis` ("support_size" or
    "ensembles")."""
    lines: dict[str, list[tuple[int, float, float]]] = {}
    for point in sorted(points, key=lambda point: getattr(point, axis)):
        for name, stats in point.kind(kind).per_class.items():
            dice = stats["dice"]
            if dice["mean"] is not None:
                lines.setdefault(name, []).append((getattr(point, axis), dice["mean"], dice["std"]))
    return lines


def save_sweep_picture(path: Path, points: list, axis: str, title: str, status: dict[str, str],
                       kinds: tuple[str, ...] = (NORMAL,)) -> Written:
    """Mean Dice per class (and task kind) with a band of one standard deviation over the targets (clipped to
    [0, 1]); an earlier picture of that name is kept (apply/outputs.py). The title is also the PNG's Title text."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    colours: dict[str, str] = {}
    for kind in kinds:
        for name, line in curves(points, axis, kind).items():
            x, mean, std = (np.asarray(values, dtype=float) for values in zip(*line))
            label = f"{name} ({status.get(name, 'held-out')})" + (f", {kind}" if len(kinds) > 1 else "")
            drawn = ax.plot(x, mean, marker=MARKERS[kind], linestyle=LINE_STYLES[kind], color=colours.get(name),
                            label=label)[0]
            colours.setdefault(name, drawn.get_color())
            ax.fill_between(x, np.clip(mean - std, 0, 1), np.clip(mean + std, 0, 1), color=drawn.get_color(),
                            alpha=0.15 if kind == NORMAL else 0.08)
    if axis == "support_size":
        ax.set_xscale("log", base=2)
    xs = sorted({getattr(point, axis) for point in points})
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel("support size" if axis == "support_size" else "averaged support draws (ensembles)")
    ax.set_ylabel("Dice (mean ± std over targets)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    png = figure_png(fig, dpi=100, metadata={"Title": title})
    return write_keeping_earlier(path, png, then="run useg evaluate again (or pass --csv elsewhere)")


def save_sweep_pictures(folder: Path, result) -> list[Written]:
    """`evaluation_support_sweep.png` when several support sizes were scored (at the largest ensemble
    count), `evaluation_ensemble_sweep.png` when several ensemble counts were (at the largest size); each with
    every task kind scored."""
    written = []
    name = Path(result.checkpoint).name
    scored = f"on {scored_on(result)}"
    if len(result.support_sizes()) > 1 or result.skipped:
        points = [point for point in result.points if point.ensembles == result.ensembles]
        title = f"{name} (epoch {result.epoch}) {scored}\nensembles={result.ensembles}, seed={result.seed}"
        written.append(save_sweep_picture(folder / SUPPORT_SWEEP_PICTURE, points, "support_size", title,
                                          result.class_status, tuple(result.task_kinds)))
    if len(result.ensemble_counts()) > 1:
        points = [point for point in result.points if point.support_size == result.support_size]
        title = f"{name} (epoch {result.epoch}) {scored}\nS={result.support_size}, seed={result.seed}"
        written.append(save_sweep_picture(folder / ENSEMBLE_SWEEP_PICTURE, points, "ensembles", title,
                                          result.class_status, tuple(result.task_kinds)))
    return written


def scored_on(result) -> str:
    """What was scored, without a path (a folder may be named after a patient): `the run's test split`,
    `a held-out folder (every image)`, `..., supports from a second folder`."""
    if not result.data.held_out:
        return f"the run's {result.split} split"
    support = ", supports from a second folder" if result.data.support_data else ""
    return f"a held-out folder (every image){support}"
