"""Numbers published in papers (``leaderboards/reported/*.yaml``), kept apart from numbers this harness reproduced.

One file is one published table measured under one protocol. Every row carries its citation (paper and table, plus
the secondary source it was read from when the paper itself was not) and a confidence label. These rows are rendered
in their own section, in the paper's order, and are never ranked against reproduced rows: their protocol is the
paper's, not a frozen mige-bench task version. See ``leaderboards/README.md`` for the format.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mige_bench.errors import MigeBenchError

logger = logging.getLogger(__name__)

REPORTED_DIR = "reported"

_TABLE_KEYS = {"task", "title", "protocol", "citation", "confidence", "columns", "rows", "notes"}
_REQUIRED_TABLE_KEYS = {"task", "title", "protocol", "columns", "rows"}
_ROW_KEYS = {"model", "scores", "citation", "confidence", "note"}
_CITATION_KEYS = {"paper", "table", "via"}


@dataclass(frozen=True)
class Citation:
    """Where a number was published.

    Attributes:
        paper: The publication (title or arXiv id).
        table: The table (or section) holding the number.
        via: The secondary copy it was read from, when the publication itself could not be read.
    """

    paper: str
    table: str
    via: str = ""

    def __str__(self) -> str:
        return f"{self.paper}, {self.table}" + (f" (via {self.via})" if self.via else "")


@dataclass(frozen=True)
class ReportedRow:
    """One published row: model, scores by column (``None`` where the paper has no value), citation, confidence."""

    model: str
    scores: Mapping[str, float | None]
    citation: Citation
    confidence: str
    note: str = ""


@dataclass(frozen=True)
class ReportedTable:
    """One published table (one protocol), shown on the page of the mige-bench task it sits beside."""

    source_file: str
    task_id: str
    title: str
    protocol: str
    columns: tuple[str, ...]
    rows: tuple[ReportedRow, ...]
    notes: str = ""


def _fail(source: str, message: str) -> MigeBenchError:
    return MigeBenchError(f"{source}: {message}")


def _citation(raw: Any, source: str, where: str) -> Citation:
    if not isinstance(raw, Mapping) or not {"paper", "table"} <= set(raw) or set(raw) - _CITATION_KEYS:
        raise _fail(source, f"{where}: citation must be a mapping with paper, table and optionally via.")
    return Citation(**{key: str(value) for key, value in raw.items()})


def _row(raw: Any, table: Mapping[str, Any], columns: tuple[str, ...], source: str, index: int) -> ReportedRow:
    where = f"row {index + 1}"
    if not isinstance(raw, Mapping) or "model" not in raw or "scores" not in raw:
        raise _fail(source, f"{where}: a row needs model and scores.")
    unknown = set(raw) - _ROW_KEYS
    if unknown:
        raise _fail(source, f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_ROW_KEYS)}.")
    scores = raw["scores"]
    if not isinstance(scores, Mapping) or set(scores) - set(columns):
        raise _fail(source, f"{where} ({raw['model']}): scores must only use the table's columns {list(columns)}.")
    for column, value in scores.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise _fail(source, f"{where} ({raw['model']}): {column} = {value!r} is not a number or null.")
    citation = raw.get("citation", table.get("citation"))
    confidence = raw.get("confidence", table.get("confidence"))
    if citation is None or not confidence:
        raise _fail(source, f"{where} ({raw['model']}): no citation or confidence (on the row or the table).")
    return ReportedRow(
        model=str(raw["model"]),
        scores={column: None if scores.get(column) is None else float(scores[column]) for column in columns},
        citation=_citation(citation, source, where),
        confidence=str(confidence),
        note=str(raw.get("note", "")),
    )


def parse_reported_table(raw: Any, source: str) -> ReportedTable:
    """Validates one reported-numbers document (see ``leaderboards/README.md``).

    Args:
        raw: The parsed YAML.
        source: File name used in error messages.

    Returns:
        The table.

    Raises:
        MigeBenchError: A missing or unknown key, a row without citation or confidence, or a non-numeric score.
    """
    if not isinstance(raw, Mapping):
        raise _fail(source, "expected a mapping at the top level.")
    missing, unknown = _REQUIRED_TABLE_KEYS - set(raw), set(raw) - _TABLE_KEYS
    if missing or unknown:
        raise _fail(source, f"missing key(s) {sorted(missing)}, unknown key(s) {sorted(unknown)}.")
    columns = tuple(str(column) for column in raw["columns"])
    if not raw["rows"]:
        raise _fail(source, "a reported table needs at least one row.")
    return ReportedTable(
        source_file=source,
        task_id=str(raw["task"]),
        title=str(raw["title"]),
        protocol=" ".join(str(raw["protocol"]).split()),
        columns=columns,
        rows=tuple(_row(row, raw, columns, source, index) for index, row in enumerate(raw["rows"])),
        notes=" ".join(str(raw.get("notes", "")).split()),
    )


def load_reported(root: Path) -> list[ReportedTable]:
    """Every ``<root>/reported/*.yaml``, ordered by file name."""
    tables = []
    for path in sorted((root / REPORTED_DIR).glob("*.yaml")):
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as error:
            raise _fail(str(path), f"not valid YAML ({error}).") from error
        tables.append(parse_reported_table(raw, f"{REPORTED_DIR}/{path.name}"))
    return tables
