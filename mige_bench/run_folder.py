"""The run folder: the artefact joining generation and scoring.

Layout::

    <run>/manifest.json   everything that defines the run (task protocol, model + args, seed, sample ids)
    <run>/images/         <sample_id>.png or <sample_id>_<k>.png
    <run>/failures.jsonl  one line per sample whose generation failed, with the reason (until its images exist)
    <run>/scores.jsonl    one line per scored output image
    <run>/results.json    aggregates + provenance (schema in ``mige_bench.results``)
    <run>/timings.json    wall seconds per stage
    <run>/.lock           held while a process works on the folder

A sharded run (``--shard i/n``) writes into the same folder: its own images, ``failures.shard-<i>-of-<n>.jsonl``,
``timings.shard-<i>-of-<n>.json``, a ``.lock.shard-<i>-of-<n>`` while it works and ``shards/<i>-of-<n>.done`` when
it has finished; scoring reads every shard's files. ``merge`` keeps the failures of its sources in
``failures.merged.jsonl``. A sample is failed while some ``failures*.jsonl`` records it and its images are missing:
whoever regenerates the images ends the failure, and a sample recorded twice counts once.

Every file is written atomically (temporary file + rename) or appended line by line with ``fsync``; a torn last
line of a ``.jsonl`` file (a crash mid-write) is detected and dropped on read, so a killed run resumes with nothing
lost, duplicated or half-written.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mige_bench.errors import MigeBenchError

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SCORES = "scores.jsonl"
FAILURES = "failures.jsonl"
MERGED_FAILURES = "failures.merged.jsonl"
RESULTS = "results.json"
IMAGES = "images"
LOCK = ".lock"


def shard_suffix(shard: tuple[int, int] | None) -> str:
    """``""`` for an unsharded run, ``".shard-<i>-of-<n>"`` for shard ``i`` of ``n``."""
    return "" if shard is None else f".shard-{shard[0]}-of-{shard[1]}"


def failures_path(run_dir: Path, shard: tuple[int, int] | None = None) -> Path:
    return run_dir / f"failures{shard_suffix(shard)}.jsonl"


def _failure_files(run_dir: Path) -> list[Path]:
    """Every ``failures*.jsonl`` of the folder, oldest first (ties by name), so later records come later."""
    return sorted(run_dir.glob("failures*.jsonl"), key=lambda path: (path.stat().st_mtime_ns, path.name))


def read_failure_records(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Sample id -> its latest failure record, over the run's, every shard's and every merged source's file.

    These are records, not the run's failures: a sample whose images were generated since is no longer failed (the
    runner's ``current_failures`` applies that rule).
    """
    return {record["sample_id"]: record for path in _failure_files(run_dir) for record in read_jsonl(path)}


def failure_files(run_dir: Path, sample_ids: Iterable[str]) -> list[Path]:
    """The ``failures*.jsonl`` files of the folder that record at least one of ``sample_ids`` (for messages)."""
    wanted = set(sample_ids)
    return [
        path
        for path in sorted(run_dir.glob("failures*.jsonl"))
        if any(record["sample_id"] in wanted for record in read_jsonl(path))
    ]


def read_all_timings(run_dir: Path) -> dict[str, float]:
    """Stage timings of the run (``generate``, ``score``) and of its shards (``generate.shard-<i>-of-<n>``)."""
    timings: dict[str, float] = {}
    for path in sorted(run_dir.glob("timings*.json")):
        suffix = path.name[len("timings") : -len(".json")]
        timings.update({f"{stage}{suffix}": seconds for stage, seconds in read_json(path).items()})
    return timings


def write_json_atomic(path: Path, payload: Any) -> None:
    """Writes ``payload`` as indented, key-sorted JSON via a temporary file and a rename."""
    text = json.dumps(payload, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    write_bytes_atomic(path, text.encode("utf-8"))


def write_jsonl_atomic(path: Path, records: Iterable[Mapping[str, Any]]) -> None:
    """Replaces ``path`` with ``records`` as JSON lines (the format of :func:`append_jsonl`) in one atomic write."""
    text = "".join(json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n" for record in records)
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` via a temporary file, fsync and a rename: the file is either whole or absent.

    The file gets the permissions ``open(path, "w")`` would give it (0666 less the umask), so results and images stay
    readable by colleagues and web servers; ``tempfile.mkstemp`` would make every one private (0600).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise MigeBenchError(f"{path}: file not found.") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise MigeBenchError(f"{path}: not valid JSON ({error}).") from error


def append_jsonl(path: Path, records: list[Mapping[str, Any]]) -> None:
    """Appends records as JSON lines and fsyncs, so each completed line survives a crash."""
    if not records:
        return
    with path.open("a", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Reads a ``.jsonl`` file written by :func:`append_jsonl`.

    A torn final line (no trailing newline, or not valid JSON) is the signature of a crash mid-append: it is dropped
    and the file truncated to its last complete line. Corruption anywhere else is an error, never skipped.
    """
    if not path.is_file():
        return []
    raw = path.read_bytes()
    records: list[dict[str, Any]] = []
    offset = 0
    for line in raw.splitlines(keepends=True):
        complete = line.endswith(b"\n")
        try:
            record = json.loads(line) if complete else None
        except json.JSONDecodeError:
            record = None
        if record is None:
            if offset + len(line) != len(raw):
                raise MigeBenchError(f"{path}: corrupt line at byte {offset}; delete the file to recompute it.")
            logger.warning("%s: dropping a torn last line left by an interrupted run", path)
            with path.open("r+b") as handle:
                handle.truncate(offset)
            break
        records.append(record)
        offset += len(line)
    return records


def manifest_differences(existing: Mapping[str, Any], requested: Mapping[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two manifests (recursing into mappings)."""
    differences: list[str] = []
    for key in sorted(set(existing) | set(requested)):
        old, new = existing.get(key, "<absent>"), requested.get(key, "<absent>")
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            differences += [f"{key}.{sub}" for sub in manifest_differences(old, new)]
        elif old != new:
            differences.append(key)
    return differences


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def run_lock(run_dir: Path, shard: tuple[int, int] | None = None) -> Iterator[None]:
    """Holds ``<run>/.lock`` so two processes never write one folder at once.

    The lock records host and pid; a lock left by a dead process on this host (a crash, SIGKILL) is stale and taken
    over. A live holder, or one on another host, makes this raise with the holder named. A folder this lock created
    and nothing was written to (the model's weights were missing, say) is removed again.
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise MigeBenchError(f"{run_dir} is a file, not a run folder; choose another --out.")
    created = not run_dir.exists()
    lock = run_dir / f"{LOCK}{shard_suffix(shard)}"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise MigeBenchError(f"Cannot create the run folder {run_dir}: {error.strerror or error}.") from None
    me = {"host": socket.gethostname(), "pid": os.getpid()}
    for _ in range(2):
        try:
            descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            try:
                holder = json.loads(lock.read_text() or "{}")
            except (OSError, json.JSONDecodeError):
                holder = {}
            same_host = holder.get("host") == me["host"]
            if same_host and isinstance(holder.get("pid"), int) and not _process_alive(holder["pid"]):
                logger.warning("%s: removing a stale lock left by dead process %s", run_dir, holder["pid"])
                lock.unlink(missing_ok=True)
                continue
            raise MigeBenchError(
                f"{run_dir} is in use by process {holder.get('pid', '?')} on {holder.get('host', '?')}; wait for it "
                f"to finish, or delete {lock} if that process is gone."
            ) from None
        except OSError as error:  # a read-only file system or a folder of someone else's: nothing can be written
            raise MigeBenchError(f"Cannot write to the run folder {run_dir}: {error.strerror or error}.") from None
        with os.fdopen(descriptor, "w") as handle:
            json.dump(me, handle)
        break
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        if created:
            with contextlib.suppress(OSError):  # not empty (another process wrote to it meanwhile): keep it
                run_dir.rmdir()
