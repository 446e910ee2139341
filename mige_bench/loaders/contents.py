"""What a scan of a local dataset copy found, checked against the counts the task expects.

Every loader module has a ``scan(task, root) -> DatasetContents`` that reads a copy without judging it, and a
``load`` that accepts the result only when it is complete (:meth:`DatasetContents.complete_samples`): a benchmark
scored on a partial copy gives a number that looks valid and is not (trap 10, silent drops). ``mige-bench data
check`` reports the same scan in full instead of failing on the first problem.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mige_bench.errors import MigeBenchError
from mige_bench.sample import Sample
from mige_bench.task import Task

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetContents:
    """The result of scanning one local copy.

    Attributes:
        location: The folder that was scanned.
        samples: The samples built from it, in benchmark order.
        counts: What was counted, by name (``subjects``, ``images``, ``turns``...).
        expected: The counts the task defines for a complete copy (from the YAML's ``data.expected``); a name
            absent here is reported but not enforced.
        missing_files: Files the dataset's index refers to that do not exist.
        notes: Facts about the copy worth telling the user (e.g. which split a layout provides).
    """

    location: Path
    samples: list[Sample]
    counts: Mapping[str, int]
    expected: Mapping[str, int] = field(default_factory=dict)
    missing_files: tuple[Path, ...] = ()
    notes: tuple[str, ...] = ()

    def count_mismatches(self) -> list[str]:
        """One line per count that differs from the expected one, e.g. ``"images: 157, expected 158"``."""
        return [
            f"{name}: {self.counts.get(name, 0)}, expected {expected}"
            for name, expected in self.expected.items()
            if self.counts.get(name, 0) != expected
        ]

    def complete_samples(self, task: Task) -> list[Sample]:
        """The samples, after refusing a copy with missing files or wrong counts.

        Raises:
            MigeBenchError: listing the first missing files and every count mismatch.
        """
        problems = self.count_mismatches()
        if self.missing_files:
            shown = ", ".join(str(path) for path in self.missing_files[:5])
            more = f" and {len(self.missing_files) - 5} more" if len(self.missing_files) > 5 else ""
            problems.append(f"{len(self.missing_files)} missing files ({shown}{more})")
        if problems:
            hints = "".join(f" Note: {note}." for note in self.notes)
            raise MigeBenchError(
                f"The copy of the data for {task.id} in {self.location} is incomplete: {'; '.join(problems)}.{hints} "
                f"Run `mige-bench data check {task.id} --data-root {self.location}` for a full report."
            )
        for note in self.notes:
            logger.warning("%s: %s", task.id, note)
        return self.samples


def expected_counts(task: Task, split: str | None = None) -> dict[str, int]:
    """The task's ``data.expected`` counts, for ``split`` when they are given per split.

    Raises:
        MigeBenchError: counts are given per split and ``split`` is not one of them.
    """
    expected = task.data.get("expected", {})
    if split is not None and split in expected:
        return {name: int(value) for name, value in expected[split].items()}
    if split is not None and any(isinstance(value, Mapping) for value in expected.values()):
        raise MigeBenchError(
            f"{task.source_file}: no expected counts for split {split!r} (known: {', '.join(expected)})."
        )
    return {name: int(value) for name, value in expected.items()}
