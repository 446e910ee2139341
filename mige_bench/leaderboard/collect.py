"""Leaderboard rows and tables: which results files may share a table, and in which order.

A row is one results file, ``leaderboards/results/<task>/<row>.json``. Rows share a table only when their
:func:`protocol_identity` is equal: same task id, same task version, same protocol definition and the same metric
backbones (spec, weight hash, preprocessing). Anything else gets its own table, so numbers measured under different
protocols are never ranked against each other. The same identity decides whether ``compare`` accepts two runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mige_bench.errors import MigeBenchError
from mige_bench.leaderboard.reported import ReportedTable
from mige_bench.run_folder import manifest_differences, read_json

logger = logging.getLogger(__name__)

RESULTS_DIR = "results"
GALLERY_SUFFIX = ".gallery"

SANITY_MODELS = ("identity", "copy_reference")
"""Sanity generators that bound every table (see ``mige_bench.models.sanity``)."""

SUBJECT_KINDS = ("subject", "subject_edit")
"""Task kinds with subject images, the only ones ``copy_reference`` can run on."""

PROSE_KEYS = ("description", "notes")
"""Task-definition keys that are prose and cannot move a number: they do not split tables."""

BACKBONE_IDENTITY_KEYS = ("spec", "weight_sha256", "preprocessing")
"""Per backbone, what decides its numbers (the resolved path or library versions of one machine do not)."""

_UNSAFE_IN_NAMES = re.compile(r"[^A-Za-z0-9._@-]")
_ROW_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def task_slug(task_id: str) -> str:
    """The task id as a file and folder name (``magicbrush@official:all_turn`` -> ``magicbrush@official-all_turn``)."""
    return _UNSAFE_IN_NAMES.sub("-", task_id)


def check_row_name(name: str) -> str:
    """Returns ``name`` when it is usable as a row file name, else raises :class:`MigeBenchError`."""
    if not _ROW_NAME.match(name) or name.endswith(GALLERY_SUFFIX):
        raise MigeBenchError(f"Row name {name!r} must be letters, digits, '.', '_' or '-' (and not end in .gallery).")
    return name


# ----------------------------------------------------------------------------------------------------------------------
# Protocol identity
# ----------------------------------------------------------------------------------------------------------------------


def protocol_identity(results: Mapping[str, Any]) -> dict[str, Any]:
    """What must be equal for two results files to be ranked together or compared.

    Args:
        results: A results file (schema in ``mige_bench.results``).

    Returns:
        ``{"task_id", "protocol", "backbones"}``: the task definition without its prose keys (it includes the
        version) with the run's effective ``images_per_sample`` (``--images-per-sample`` can override the task's,
        which changes the standard errors), and per used backbone its spec, weight hash and preprocessing.
    """
    protocol = {key: value for key, value in results["task"].items() if key not in PROSE_KEYS}
    protocol["images_per_sample"] = results.get("images_per_sample", protocol.get("images_per_sample", 1))
    backbones = {
        name: {key: record.get(key) for key in BACKBONE_IDENTITY_KEYS}
        for name, record in sorted(results["provenance"]["backbones"].items())
        if record.get("used", True)
    }
    return {"task_id": results["task_id"], "protocol": protocol, "backbones": backbones}


def protocol_fingerprint(results: Mapping[str, Any]) -> str:
    """Eight hex digits naming a :func:`protocol_identity`, shown above each table so tables can be told apart."""
    text = json.dumps(protocol_identity(results), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _shorten(value: Any, width: int = 40) -> str:
    text = json.dumps(value, sort_keys=True, default=str) if not isinstance(value, str) else value
    return text if len(text) <= width else text[: width - 1] + "…"


def protocol_differences(base: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Human-readable ``key: base vs new`` lines for every identity field in which two results files differ.

    Args:
        base: The first results file.
        new: The second results file.

    Returns:
        One line per differing dotted key (empty when the two may be compared).
    """
    base_identity, new_identity = protocol_identity(base), protocol_identity(new)
    lines = []
    for dotted in manifest_differences(base_identity, new_identity):
        values = []
        for identity in (base_identity, new_identity):
            value: Any = identity
            for part in dotted.split("."):
                value = value.get(part, "<absent>") if isinstance(value, Mapping) else "<absent>"
            values.append(_shorten(value))
        lines.append(f"{dotted}: {values[0]} vs {values[1]}")
    return lines


# ----------------------------------------------------------------------------------------------------------------------
# Rows and tables
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One results file on a leaderboard.

    Attributes:
        name: The file stem, shown as the row's model name (a ``folder`` run is named by its row, not its generator).
        path: The results file, relative to the leaderboard root.
        results: Its parsed content.
        gallery: The row's gallery folder relative to the root (see ``mige_bench.leaderboard.gallery``), if any.
    """

    name: str
    path: Path
    results: Mapping[str, Any]
    gallery: Path | None = None

    @property
    def is_sanity(self) -> bool:
        return self.results["model"]["name"] in SANITY_MODELS

    @property
    def date(self) -> str:
        return str(self.results["provenance"].get("created_at") or "")[:10]

    @property
    def source(self) -> str:
        provenance = self.results["provenance"]
        sha = provenance.get("git_sha")
        return f"mige-bench {provenance.get('mige_bench_version', '?')}" + (f" @ {sha[:7]}" if sha else "")

    @property
    def n_samples(self) -> int:
        """Samples that have scores: the largest ``n_samples`` of the row's metrics.

        ``counts.scored_samples`` counts the samples the task scores, failed ones included; a failed sample has no
        score line, so it is in no metric's ``n_samples``.
        """
        return max((summary.get("n_samples", 0) for summary in self.results["metrics"].values()), default=0)

    @property
    def coverage_note(self) -> str | None:
        """Why the row's means cover fewer samples than the task scores (None when they cover them all).

        Example: ``alpha: 1 sample failed to generate; means are over the 5 of 6 samples that have scores.``
        """
        counts = self.results["counts"]
        expected, failed = counts["scored_samples"], counts.get("failed_samples", 0)
        if self.n_samples >= expected and not failed:
            return None
        failed_clause = f"{failed} {'sample' if failed == 1 else 'samples'} failed to generate; " if failed else ""
        covered = f"means are over the {self.n_samples} of {expected} samples that have scores"
        return f"{self.name}: {failed_clause}{covered}."


@dataclass(frozen=True)
class Column:
    """A score column of a table, with its direction."""

    name: str
    higher_is_better: bool

    @property
    def label(self) -> str:
        return f"{self.name} {'↑' if self.higher_is_better else '↓'}"


@dataclass(frozen=True)
class LeaderboardTable:
    """Rows measured under one protocol identity, sorted best first on the task's primary metric.

    Attributes:
        task_id: The task id all rows share.
        fingerprint: :func:`protocol_fingerprint` of the rows.
        task: The task definition (of the first row; all rows share it up to prose).
        backbones: The used backbones' identity (spec, weight hash, preprocessing).
        columns: Score columns, the primary metric first.
        rows: Rows, best first; rows without a primary-metric value last.
        missing_sanity: Sanity models that apply to the task but have no row here.
    """

    task_id: str
    fingerprint: str
    task: Mapping[str, Any]
    backbones: Mapping[str, Any]
    columns: tuple[Column, ...]
    rows: tuple[Row, ...]
    missing_sanity: tuple[str, ...]

    @property
    def primary(self) -> Column:
        return self.columns[0]

    @property
    def comparable(self) -> bool:
        return all(row.results["comparable"] for row in self.rows)

    @property
    def breakdown_keys(self) -> list[str]:
        return sorted({key for row in self.rows for key in row.results.get("breakdown", {})})

    def categories(self, key: str) -> list[str]:
        return sorted({category for row in self.rows for category in row.results.get("breakdown", {}).get(key, {})})


@dataclass(frozen=True)
class TaskPage:
    """Everything shown for one task id: its reproduced tables (one per protocol identity) and reported tables."""

    task_id: str
    description: str
    tables: tuple[LeaderboardTable, ...]
    reported: tuple[ReportedTable, ...]

    @property
    def slug(self) -> str:
        return task_slug(self.task_id)


def _installed_task_definition(task_id: str) -> Mapping[str, Any]:
    """The bundled task's definition, for pages with reported numbers only (empty for an unknown task id)."""
    from mige_bench.task import get_task

    try:
        return get_task(task_id).definition()
    except MigeBenchError:
        return {}


def task_pages(tables: Sequence[LeaderboardTable], reported: Sequence[ReportedTable]) -> list[TaskPage]:
    """One page per task id that has reproduced rows or reported numbers, ordered by task id."""
    task_ids = sorted({table.task_id for table in tables} | {table.task_id for table in reported})
    pages = []
    for task_id in task_ids:
        own_tables = tuple(table for table in tables if table.task_id == task_id)
        definition = own_tables[0].task if own_tables else _installed_task_definition(task_id)
        pages.append(
            TaskPage(
                task_id=task_id,
                description=" ".join(str(definition.get("description", "")).split()),
                tables=own_tables,
                reported=tuple(table for table in reported if table.task_id == task_id),
            )
        )
    return pages


def collect_rows(root: Path) -> list[Row]:
    """Reads every ``<root>/results/<task>/<row>.json``; a file filed under the wrong task folder is an error.

    Args:
        root: The leaderboard root (``leaderboards/``).

    Returns:
        Rows ordered by path.
    """
    rows = []
    for path in sorted((root / RESULTS_DIR).glob("*/*.json")):
        results = read_json(path)
        if not isinstance(results, Mapping) or "task_id" not in results:
            raise MigeBenchError(f"{path}: not a mige-bench results file (no task_id).")
        if task_slug(results["task_id"]) != path.parent.name:
            raise MigeBenchError(
                f"{path} holds results of {results['task_id']}; move it to "
                f"{root / RESULTS_DIR / task_slug(results['task_id'])}/."
            )
        gallery = path.with_name(path.stem + GALLERY_SUFFIX)
        rows.append(
            Row(
                name=check_row_name(path.stem),
                path=path.relative_to(root),
                results=results,
                gallery=gallery.relative_to(root) if gallery.is_dir() else None,
            )
        )
    return rows


def _sort_key(row: Row, primary: Column) -> tuple[int, float, str]:
    mean = row.results["metrics"].get(primary.name, {}).get("mean")
    if mean is None:
        return (1, 0.0, row.name)
    return (0, -mean if primary.higher_is_better else mean, row.name)


def _columns(rows: Sequence[Row], primary_name: str) -> tuple[Column, ...]:
    directions: dict[str, bool] = {}
    for row in rows:
        for name, summary in row.results["metrics"].items():
            directions.setdefault(name, summary["higher_is_better"])
    if primary_name not in directions:
        raise MigeBenchError(f"{rows[0].path}: primary metric {primary_name!r} has no column in the results.")
    ordered = [primary_name] + [name for name in directions if name != primary_name]
    return tuple(Column(name, directions[name]) for name in ordered)


def applicable_sanity_models(task: Mapping[str, Any]) -> tuple[str, ...]:
    """``identity`` everywhere; ``copy_reference`` only where samples have subject images."""
    return SANITY_MODELS if task.get("kind") in SUBJECT_KINDS else ("identity",)


def group_into_tables(rows: Sequence[Row]) -> list[LeaderboardTable]:
    """Splits rows into tables of equal protocol identity, each sorted best first on its primary metric.

    Args:
        rows: Rows of any tasks.

    Returns:
        Tables ordered by task id, then task version, then fingerprint.
    """
    groups: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        groups.setdefault((row.results["task_id"], protocol_fingerprint(row.results)), []).append(row)
    tables = []
    for (task_id, fingerprint), members in groups.items():
        task = members[0].results["task"]
        columns = _columns(members, task["primary_metric"])
        present = {row.results["model"]["name"] for row in members}
        tables.append(
            LeaderboardTable(
                task_id=task_id,
                fingerprint=fingerprint,
                task=task,
                backbones=protocol_identity(members[0].results)["backbones"],
                columns=columns,
                rows=tuple(sorted(members, key=lambda row: _sort_key(row, columns[0]))),
                missing_sanity=tuple(name for name in applicable_sanity_models(task) if name not in present),
            )
        )
    return sorted(tables, key=lambda table: (table.task_id, -int(table.task["version"]), table.fingerprint))


def format_summary(summary: Mapping[str, Any] | None) -> str:
    """``mean [low, high]`` with four decimals; ``—`` for a missing mean, no interval when it is undefined."""
    if not summary or summary.get("mean") is None:
        return "—"
    ci = summary.get("ci95")
    interval = f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci and None not in ci else ""
    return f"{summary['mean']:.4f}{interval}"


def describe_backbones(backbones: Mapping[str, Any]) -> str:
    """``clip = smoke (weights 8c34925f), dino = …`` for a table heading."""
    parts = []
    for name, record in backbones.items():
        weights = record.get("weight_sha256")
        parts.append(f"{name} = {record.get('spec')}" + (f" (weights {weights[:8]})" if weights else ""))
    return ", ".join(parts) or "none"
