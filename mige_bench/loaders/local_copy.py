"""Finding, fetching and reading the local copy of a benchmark dataset.

A loader never downloads on its own. It looks for the data in this order:

1. ``--data-root`` given by the user;
2. the default data folder ``$MIGE_BENCH_HOME/data/<dataset>`` (``~/.cache/mige-bench/data/<dataset>`` when the
   variable is unset), which is where ``mige-bench data fetch`` puts things;
3. for Hugging Face datasets, a snapshot already in the Hugging Face cache (looked up with ``local_files_only``, so
   no network is touched).

When none exists it raises :class:`MigeBenchError` naming the fetch command and the folder to use.

The task YAML's ``data`` mapping supplies ``dataset`` (folder name under the data home), ``hub_id`` and
``hub_revision`` for Hugging Face datasets, and optionally ``manual_download`` (how to obtain data that cannot be
fetched automatically, e.g. MagicBrush's password-protected test zip).
"""

from __future__ import annotations

import logging
import shlex
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mige_bench.errors import MigeBenchError
from mige_bench.images import ImageRef
from mige_bench.paths import mige_bench_home
from mige_bench.task import Task

logger = logging.getLogger(__name__)

_DOWNLOAD_CHUNK_BYTES = 1 << 20


def read_text_file(path: Path) -> str:
    """Reads a dataset text file as UTF-8; a file in another encoding is a clear error naming it."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise MigeBenchError(f"{path}: not valid UTF-8 text ({error.reason} at byte {error.start}).") from error


def data_home() -> Path:
    """Root under which ``data/<dataset>`` folders live (see :func:`mige_bench.paths.mige_bench_home`)."""
    return mige_bench_home()


def default_data_dir(task: Task) -> Path:
    """Where ``data fetch`` puts a task's dataset when no destination is given."""
    return data_home() / "data" / str(task.data.get("dataset", task.name))


def locate_copy(task: Task, data_root: Path | None, is_copy: Callable[[Path], bool]) -> Path:
    """Returns the folder holding the task's dataset (see the module docstring for the search order).

    Args:
        task: The task; ``task.data`` names the dataset and its hub id.
        data_root: The user's ``--data-root``; when given it must hold a copy (no fallback to other places, so a
            typo never silently scores a different copy).
        is_copy: Whether a folder looks like a copy of this dataset (its layout's marker files exist).

    Raises:
        MigeBenchError: no copy found, naming what to fetch and where to put it.
    """
    if data_root is not None:
        data_root = Path(data_root).expanduser()
        if not data_root.is_dir():
            raise MigeBenchError(
                f"--data-root {data_root} {'is a file, not a folder' if data_root.exists() else 'does not exist'}; "
                f"give the folder holding the {task.data.get('dataset', task.name)} data for task {task.id}."
            )
        if not is_copy(data_root):
            raise MigeBenchError(
                f"{data_root} does not look like a copy of {task.data.get('dataset', task.name)} for task {task.id}. "
                f"{_how_to_obtain(task)}"
            )
        return data_root
    default = default_data_dir(task)
    if is_copy(default):
        return default
    cached = _hub_cache_snapshot(task)
    if cached is not None and is_copy(cached):
        return cached
    raise MigeBenchError(f"No local copy of the data for task {task.id}. {_how_to_obtain(task)}")


def _how_to_obtain(task: Task) -> str:
    manual = task.data.get("manual_download")
    if manual:
        return f"{manual} Then pass --data-root DIR or put it in {default_data_dir(task)}."
    return (
        f"Run `mige-bench data fetch {task.id}` on a machine with internet (it writes to "
        f"{default_data_dir(task)}), or pass --data-root DIR pointing at your own copy."
    )


def _hub_cache_snapshot(task: Task) -> Path | None:
    hub_id = task.data.get("hub_id")
    if not hub_id:
        return None
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = snapshot_download(
            hub_id, repo_type="dataset", revision=task.data.get("hub_revision"), local_files_only=True
        )
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None
    logger.info("Using the Hugging Face cache snapshot of %s at %s", hub_id, folder)
    return Path(folder)


def fetch_hub_snapshot(task: Task, destination: Path, progress: bool, allow_patterns: list[str] | None = None) -> Path:
    """Downloads the task's Hugging Face dataset repository into ``destination`` (resumable: interrupted files are
    completed on the next call, finished ones are not fetched again)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    hub_id = task.data["hub_id"]
    logger.info("Fetching %s from the Hugging Face hub into %s", hub_id, destination)
    bars_were_disabled = are_progress_bars_disabled()
    if not progress:
        disable_progress_bars()
    try:
        snapshot_download(
            hub_id,
            repo_type="dataset",
            revision=task.data.get("hub_revision"),
            local_dir=destination,
            allow_patterns=allow_patterns,
        )
    except LocalEntryNotFoundError as error:
        # This is how snapshot_download reports a hub it could not reach (no connection, timeout, hub down,
        # HF_HUB_OFFLINE=1); the network error it caught is the cause. Only its first line: hub errors append
        # multi-line advice.
        cause = error.__cause__
        if isinstance(cause, OfflineModeIsEnabled):
            reason = "HF_HUB_OFFLINE is set"
        else:
            reason = (f"{type(cause).__name__}: {cause}" if cause else str(error)).splitlines()[0].rstrip(": ")
        raise MigeBenchError(
            f"Cannot download {hub_id} from the Hugging Face hub ({reason}); check the network connection, or on a "
            f"machine with internet run `{_hub_download_command(task, allow_patterns)}` and pass --data-root DIR."
        ) from error
    finally:
        if not progress and not bars_were_disabled:
            enable_progress_bars()
    return destination


def _hub_download_command(task: Task, allow_patterns: list[str] | None) -> str:
    """The ``hf download`` command that fetches the same files as :func:`fetch_hub_snapshot` into ``DIR``."""
    words = ["hf", "download", task.data["hub_id"], "--repo-type", "dataset"]
    if task.data.get("hub_revision"):
        words += ["--revision", str(task.data["hub_revision"])]
    for pattern in allow_patterns or []:
        words += ["--include", pattern]
    return shlex.join([*words, "--local-dir", "DIR"])


def download_url(url: str, target: Path, progress: bool) -> Path:
    """Downloads ``url`` to ``target``, resuming a previous partial download (``<target>.part``) with an HTTP range
    request when the server supports it. A finished ``target`` is not downloaded again."""
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    start = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as error:
        if error.code != 416:  # 416: the partial file is already complete
            raise MigeBenchError(f"Download of {url} failed: HTTP {error.code} {error.reason}.") from error
        partial.replace(target)
        return target
    except urllib.error.URLError as error:
        raise MigeBenchError(f"Cannot reach {url} ({error.reason}); check the network connection.") from error
    with response:
        resumed = start > 0 and response.status == 206
        if not resumed:
            start = 0  # the server ignored the range request: start over
        length = response.headers.get("Content-Length")
        total = start + int(length) if length else None
        with (
            partial.open("ab" if resumed else "wb") as handle,
            tqdm(total=total, initial=start, unit="B", unit_scale=True, desc=target.name, disable=not progress) as bar,
        ):
            while chunk := response.read(_DOWNLOAD_CHUNK_BYTES):
                handle.write(chunk)
                bar.update(len(chunk))
    partial.replace(target)
    return target


def read_hf_split(root: Path, split: str) -> list[dict[str, Any]]:
    """Rows of one split of a Hugging Face dataset stored under ``root``, without decoding images.

    Two layouts are understood: the hub's parquet files (``data/<split>-00000-of-00002.parquet``, found anywhere
    under ``root``) and a ``datasets`` ``save_to_disk`` folder (``dataset_dict.json`` + one folder per split, or a
    single split). Image columns come back as ``{"bytes": ..., "path": ...}`` dicts (see :func:`image_from_cell`).

    Raises:
        MigeBenchError: the split is not there, naming the splits that are.
    """
    parquet_files = split_parquet_files(root, split)
    if parquet_files:
        import pyarrow as pa
        import pyarrow.parquet as pq

        return pa.concat_tables([pq.read_table(path) for path in parquet_files]).to_pylist()
    if (root / "dataset_dict.json").is_file() or (root / "state.json").is_file():
        return _read_saved_dataset(root, split)
    found = sorted({path.name.split("-")[0] for path in root.rglob("*.parquet")})
    raise MigeBenchError(f"No '{split}' split in {root} (parquet files found for: {', '.join(found) or 'none'}).")


def split_parquet_files(root: Path, split: str) -> list[Path]:
    """The parquet shards of ``split`` under ``root`` (hub naming ``<split>-*.parquet`` or ``<split>.parquet``)."""
    return sorted(
        path for path in root.rglob("*.parquet") if path.name == f"{split}.parquet" or path.name.startswith(f"{split}-")
    )


def _read_saved_dataset(root: Path, split: str) -> list[dict[str, Any]]:
    import datasets

    saved = datasets.load_from_disk(str(root))
    if isinstance(saved, datasets.DatasetDict):
        if split not in saved:
            raise MigeBenchError(f"No '{split}' split in {root} (splits: {', '.join(saved)}).")
        saved = saved[split]
    return saved.with_format("arrow")[:].to_pylist()


def image_from_cell(cell: Any, label: str) -> ImageRef:
    """An :class:`ImageRef` from a Hugging Face ``Image`` cell (``{"bytes": ..., "path": ...}``), kept encoded.

    Raises:
        MigeBenchError: the cell holds no image bytes.
    """
    if isinstance(cell, dict) and cell.get("bytes"):
        return ImageRef(data=cell["bytes"], label=label)
    raise MigeBenchError(f"{label}: the dataset row holds no image bytes (got {type(cell).__name__}).")
