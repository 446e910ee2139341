"""``mige-bench data fetch`` and ``data check``: downloading a task's public dataset and validating a local copy.

The per-dataset knowledge lives in the task's loader module (``LOADERS[task.loader]``), which provides, besides its
``load`` function: ``locate(task, data_root) -> Path`` (find the copy), ``scan(task, root) -> DatasetContents``
(read it without judging) and ``fetch(task, destination, progress) -> Path`` (download what is public). This module
only dispatches to them and turns a scan into a report.
"""

from __future__ import annotations

import importlib
import logging
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from tqdm import tqdm

from mige_bench.errors import MigeBenchError
from mige_bench.images import ImageRef
from mige_bench.loaders import LOADERS
from mige_bench.loaders.local_copy import default_data_dir
from mige_bench.sample import Sample
from mige_bench.task import Task

logger = logging.getLogger(__name__)

_LISTED_PROBLEMS = 20


def _dataset_module(task: Task) -> ModuleType:
    target = LOADERS.get(task.loader, task.loader)
    module = importlib.import_module(target.partition(":")[0])
    if not all(hasattr(module, name) for name in ("locate", "scan", "fetch")):
        raise MigeBenchError(
            f"Task {task.id}: its loader {task.loader!r} does not support `data fetch` / `data check`."
        )
    return module


def fetch_dataset(task: Task, destination: Path | None = None, progress: bool = True) -> Path:
    """Downloads what is public of the task's dataset (resumable; finished files are not fetched again).

    Args:
        task: The task whose data to fetch.
        destination: Target folder; default ``$MIGE_BENCH_HOME/data/<dataset>``, where loaders look without
            ``--data-root``.
        progress: Show progress bars.

    Returns:
        The folder holding the copy (pass it as ``--data-root`` when it is not the default).
    """
    elsewhere = destination is not None
    destination = Path(destination) if elsewhere else default_data_dir(task)
    destination.mkdir(parents=True, exist_ok=True)
    folder = _dataset_module(task).fetch(task, destination, progress)
    # `data check` without --data-root checks the default folder, so a copy put elsewhere must be named.
    check = f"mige-bench data check {task.id}" + (f" --data-root {shlex.quote(str(folder))}" if elsewhere else "")
    logger.info("Fetched the data of %s into %s; validate it with `%s`.", task.id, folder, check)
    return folder


@dataclass(frozen=True)
class DatasetCheck:
    """The validation report of one local copy.

    Attributes:
        task_id: The task checked.
        location: The folder checked.
        counts: What was counted, by name.
        expected: The counts of a complete copy (only these are judged).
        missing_files: Files the dataset's index names that do not exist.
        unreadable_images: ``(image, reason)`` for every image that exists but cannot be decoded.
        notes: Facts about the copy (e.g. which split a layout provides).
    """

    task_id: str
    location: Path
    counts: dict[str, int]
    expected: dict[str, int]
    missing_files: tuple[Path, ...] = ()
    unreadable_images: tuple[tuple[str, str], ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def count_mismatches(self) -> dict[str, tuple[int, int]]:
        """``{name: (found, expected)}`` for each count that differs from the expected one."""
        return {
            name: (self.counts.get(name, 0), want)
            for name, want in self.expected.items()
            if self.counts.get(name, 0) != want
        }

    @property
    def ok(self) -> bool:
        """Whether the copy is complete: expected counts met, nothing missing, every image readable."""
        return not (self.count_mismatches or self.missing_files or self.unreadable_images)

    def render(self) -> str:
        """A plain-text report for the terminal."""
        lines = [f"Data check of {self.task_id} in {self.location}"]
        width = max((len(name) for name in self.counts), default=0)
        for name, found in self.counts.items():
            want = self.expected.get(name)
            verdict = "" if want is None else ("  ok" if found == want else f"  MISMATCH (expected {want})")
            lines.append(f"  {name:<{width}}  {found:>6}{verdict}")
        for name, (found, want) in self.count_mismatches.items():
            if name not in self.counts:
                lines.append(f"  {name:<{width}}  {found:>6}  MISMATCH (expected {want})")
        lines += _listed("Missing files", [str(path) for path in self.missing_files])
        lines += _listed("Unreadable images", [f"{name}: {reason}" for name, reason in self.unreadable_images])
        lines += [f"Note: {note}" for note in self.notes]
        lines.append("Result: OK" if self.ok else "Result: PROBLEMS FOUND")
        return "\n".join(lines)


def _listed(title: str, items: list[str]) -> list[str]:
    if not items:
        return []
    shown = [f"  {item}" for item in items[:_LISTED_PROBLEMS]]
    more = [f"  ... and {len(items) - _LISTED_PROBLEMS} more"] if len(items) > _LISTED_PROBLEMS else []
    return [f"{title} ({len(items)}):", *shown, *more]


def check_dataset(task: Task, data_root: Path | None = None, progress: bool = True) -> DatasetCheck:
    """Validates a local copy: counts against the task's expected counts, missing files, and decodes every image.

    Args:
        task: The task whose data to check.
        data_root: The copy to check; default: where the loader would look (see ``loaders/local_copy.py``).
        progress: Show a progress bar while decoding images.

    Raises:
        MigeBenchError: no copy found, or its index cannot be read at all.
    """
    module = _dataset_module(task)
    contents = module.scan(task, module.locate(task, data_root))
    missing = set(contents.missing_files)
    unreadable: list[tuple[str, str]] = []
    images = [image for image in _unique_images(contents.samples) if image.path not in missing]
    for image in tqdm(images, desc=f"decoding {task.id} images", unit="img", disable=not progress):
        try:
            image.open()
        except MigeBenchError as error:
            unreadable.append((image.name, str(error)))
    return DatasetCheck(
        task_id=task.id,
        location=contents.location,
        counts=dict(contents.counts),
        expected=dict(contents.expected),
        missing_files=tuple(sorted(missing)),
        unreadable_images=tuple(unreadable),
        notes=contents.notes,
    )


def _unique_images(samples: list[Sample]) -> Iterator[ImageRef]:
    """Every image a sample names (inputs and references), each file or byte string once."""
    seen: set[object] = set()
    for sample in samples:
        candidates: list[object] = [
            sample.inputs.source_image,
            *sample.inputs.subject_images,
            *sample.inputs.placeholder_images,
        ]
        for value in sample.references.values():
            candidates.extend(value if isinstance(value, tuple) else [value])
        for candidate in candidates:
            if not isinstance(candidate, ImageRef):
                continue
            key = candidate.path if candidate.path is not None else id(candidate.data)
            if key not in seen:
                seen.add(key)
                yield candidate
