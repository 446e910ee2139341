"""Leaderboard plots with matplotlib: per-metric bars with CI error bars, per-category heat map, score-vs-score scatter.

Figures are drawn on ``matplotlib.figure.Figure`` objects (no pyplot global state, no display needed). A plot's file
name ends with a hash of the data it draws, so the tables that embed it change whenever the plot would, and
``--check`` can test plots by name: PNG bytes also depend on the matplotlib and font versions of the machine.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
from dataclasses import dataclass
from typing import Any

from mige_bench.leaderboard.collect import Column, LeaderboardTable, Row

logger = logging.getLogger(__name__)

SCATTER_PAIRS = (("clip_t", "dino"), ("clip_t", "clip_i"), ("clip_t", "entity_dino"))
"""Preferred score-vs-score plots: prompt following (CLIP-T) against preservation (DINO / CLIP-I)."""

SANITY_COLOUR = "#9e9e9e"
MODEL_COLOUR = "#3b6fb6"
DPI = 100
BAR_PANELS_PER_LINE = 4
PLOT_STYLE_VERSION = 1
"""Part of every plot's name: bump it when a change here redraws plots, so ``--check`` sees their tables as stale."""


@dataclass(frozen=True)
class Plot:
    """A rendered figure: file name (unique per table and data), alt text, PNG bytes."""

    filename: str
    title: str
    png: bytes


def _render(figure: Any, table: LeaderboardTable, kind: str, title: str, data: Any) -> Plot:
    digest = hashlib.sha256(json.dumps([PLOT_STYLE_VERSION, data], sort_keys=True).encode()).hexdigest()[:10]
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return Plot(filename=f"{table.fingerprint}-{kind}-{digest}.png", title=title, png=buffer.getvalue())


def _summary(row: Row, column: str) -> dict[str, Any]:
    return row.results["metrics"].get(column, {})


def bar_charts(table: LeaderboardTable) -> Plot:
    """One panel per metric: each row's mean with its bootstrap 95% CI as an error bar (sanity rows in grey)."""
    from matplotlib.figure import Figure

    names = [row.name for row in table.rows]
    data = {
        column.name: [
            [_summary(row, column.name).get("mean"), _summary(row, column.name).get("ci95")] for row in table.rows
        ]
        for column in table.columns
    }
    panel_columns = min(BAR_PANELS_PER_LINE, len(table.columns))
    panel_lines = math.ceil(len(table.columns) / panel_columns)
    height = panel_lines * (0.9 + 0.3 * len(names))
    figure = Figure(figsize=(3.0 * panel_columns + 1.0, height), layout="constrained")
    axes = figure.subplots(panel_lines, panel_columns, squeeze=False)
    positions = list(range(len(names)))
    colours = [SANITY_COLOUR if row.is_sanity else MODEL_COLOUR for row in table.rows]
    for index, axis in enumerate(axes.flat):
        if index >= len(table.columns):
            axis.set_visible(False)
            continue
        column = table.columns[index]
        means = [mean if mean is not None else 0.0 for mean, _ in data[column.name]]
        errors = [
            [max(0.0, mean - ci[0]), max(0.0, ci[1] - mean)]
            if mean is not None and ci and None not in ci
            else [0.0, 0.0]
            for mean, ci in data[column.name]
        ]
        axis.barh(positions, means, xerr=list(zip(*errors, strict=True)), color=colours, capsize=3)
        axis.set_title(column.label, fontsize=9)
        axis.tick_params(labelsize=8)
        axis.set_yticks(positions, names if index % panel_columns == 0 else [""] * len(names))
        axis.invert_yaxis()
    return _render(figure, table, "bars", f"{table.task_id}: mean and 95% CI per metric", [names, data])


def heat_map(table: LeaderboardTable, key: str) -> Plot | None:
    """Rows x categories of ``key``, coloured by the primary metric's mean (better is always darker blue)."""
    from matplotlib.figure import Figure

    categories = table.categories(key)
    if not categories:
        return None
    primary = table.primary
    values = [
        [
            row.results["breakdown"].get(key, {}).get(category, {}).get(primary.name, {}).get("mean")
            for category in categories
        ]
        for row in table.rows
    ]
    figure = Figure(figsize=(1.2 + 0.9 * len(categories), 1.0 + 0.4 * len(table.rows)), layout="constrained")
    axis = figure.subplots()
    grid = [[float("nan") if value is None else value for value in line] for line in values]
    image = axis.imshow(grid, cmap="Blues" if primary.higher_is_better else "Blues_r", aspect="auto")
    for y, line in enumerate(values):
        for x, value in enumerate(line):
            dark = value is not None and abs(float(image.norm(value)) - (0 if primary.higher_is_better else 1)) > 0.6
            text = "—" if value is None else f"{value:.3f}"
            axis.text(x, y, text, ha="center", va="center", fontsize=7, color="white" if dark else "black")
    axis.set_xticks(range(len(categories)), categories, rotation=45, ha="right", fontsize=8)
    axis.set_yticks(range(len(table.rows)), [row.name for row in table.rows], fontsize=8)
    axis.set_title(f"{primary.label} by {key}", fontsize=9)
    figure.colorbar(image, ax=axis)
    title = f"{table.task_id}: {primary.name} by {key}"
    return _render(figure, table, f"heatmap-{key}", title, [[row.name for row in table.rows], categories, values])


def _scatter_pair(columns: tuple[Column, ...]) -> tuple[Column, Column] | None:
    by_name = {column.name: column for column in columns}
    for x, y in SCATTER_PAIRS:
        if x in by_name and y in by_name:
            return by_name[x], by_name[y]
    return (columns[0], columns[1]) if len(columns) > 1 else None


def scatter(table: LeaderboardTable) -> Plot | None:
    """Score vs score across rows (CLIP-T vs DINO where both exist): the edit-strength / preservation trade-off."""
    from matplotlib.figure import Figure

    pair = _scatter_pair(table.columns)
    if pair is None:
        return None
    x_column, y_column = pair
    points = [
        [row.name, _summary(row, x_column.name).get("mean"), _summary(row, y_column.name).get("mean")]
        for row in table.rows
    ]
    figure = Figure(figsize=(4.5, 3.6), layout="constrained")
    axis = figure.subplots()
    for (name, x, y), row in zip(points, table.rows, strict=True):
        if x is None or y is None:
            continue
        axis.scatter([x], [y], color=SANITY_COLOUR if row.is_sanity else MODEL_COLOUR)
        axis.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    axis.set_xlabel(x_column.label)
    axis.set_ylabel(y_column.label)
    title = f"{table.task_id}: {y_column.name} vs {x_column.name}"
    return _render(figure, table, f"scatter-{x_column.name}-{y_column.name}", title, points)


def table_plots(table: LeaderboardTable) -> list[Plot]:
    """Every plot of one table: bars, one heat map per breakdown key, the scatter."""
    plots = [bar_charts(table)]
    plots += [plot for key in table.breakdown_keys if (plot := heat_map(table, key)) is not None]
    scatter_plot = scatter(table)
    return plots + ([scatter_plot] if scatter_plot else [])
