"""Where mige-bench keeps things, and the one check that keeps dataset paths inside their dataset."""

from __future__ import annotations

import os
from pathlib import Path

from mige_bench.errors import MigeBenchError


def mige_bench_home() -> Path:
    """Root of mige-bench's local files (weights, data, caches): ``$MIGE_BENCH_HOME``, else ``~/.cache/mige-bench``."""
    return Path(os.environ.get("MIGE_BENCH_HOME", "~/.cache/mige-bench")).expanduser()


def resolve_inside(root: Path, relative: str | os.PathLike, what: str = "dataset record") -> Path:
    """Joins a path read from a dataset file onto ``root``, refusing anything that escapes it.

    Dataset files are untrusted input: an absolute path or ``../../etc/passwd`` in a record must not make mige-bench
    read (or, through ``data fetch``, write) outside the dataset folder.

    Raises:
        MigeBenchError: the path is absolute or resolves outside ``root``.
    """
    candidate = Path(relative)
    resolved_root = root.resolve()
    resolved = (resolved_root / candidate).resolve()
    if candidate.is_absolute() or not resolved.is_relative_to(resolved_root):
        raise MigeBenchError(f"{what} path {str(relative)!r} points outside the data folder {root}; refusing it.")
    return root / candidate
