"""MagicBrush: manually annotated instruction editing, sessions of one to three turns.

The task's ``data.split`` picks one of two sources, which give the same records (session ``img_id``, turn ``k`` from
1, instruction, source, mask, target):

- ``test`` (``magicbrush@official:*``): the official test zip, unzipped (``root`` may be the ``test`` folder or its
  parent); 535 sessions / 1,053 turns; password-protected, not redistributable, so never fetched automatically::

      edit_sessions.json        {img_id: [{"input", "mask", "output", "instruction"}, ...]}  (turn order)
      images/<img_id>/<img_id>-input.png, -mask1.png, -output1.png, -output2.png ...
      local_descriptions.json / global_descriptions.json   {img_id: {file name: caption}}

- ``dev`` (``magicbrush_dev@official:*``): the public Hugging Face ``osunlp/MagicBrush`` parquet files (columns
  ``img_id, turn_index, source_img, mask_img, instruction, target_img``; 266 sessions / 528 turns; no captions).

Each split is only read from its own layout, so a dev copy can never be scored under a test task id.

Settings (the task's ``setting``): ``all_turn`` edits every turn from its ground-truth input (turn k > 1 starts from
the GT output of turn k-1) and scores every output; ``final_turn`` chains each session: turn k has
``chain_from`` = turn k-1 (the runner feeds it the model's own previous output; its ``source_image`` is ``None``)
and only the last turn is scored.

Task ``data`` arguments: ``split`` (``test`` or ``dev``), ``captions`` (``local`` by default, or ``global``: which
description file CLIP-T uses, recorded in each sample's ``caption_source``; test only), ``hub_id`` /
``hub_revision`` for the dev parquet files, ``expected`` (``sessions``, ``turns``, ``captioned_turns``),
``manual_download``.

References: ``target_image`` (GT output of the turn), ``mask``, ``output_caption`` (the chosen description of the
GT output; test split only).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mige_bench.errors import MigeBenchError
from mige_bench.images import ImageRef
from mige_bench.loaders.contents import DatasetContents, expected_counts
from mige_bench.loaders.local_copy import (
    fetch_hub_snapshot,
    image_from_cell,
    locate_copy,
    read_hf_split,
    read_text_file,
    split_parquet_files,
)
from mige_bench.paths import resolve_inside
from mige_bench.sample import ModelInputs, Sample
from mige_bench.task import Task

SESSIONS_FILE = "edit_sessions.json"
SETTINGS = ("all_turn", "final_turn")
SPLITS = ("test", "dev")
DATA_KEYS = frozenset({"split", "captions"})
_TEST_SPLIT = "test"


@dataclass(frozen=True)
class Turn:
    """One ground-truth edit of a session.

    Attributes:
        session: The session's ``img_id``.
        index: Turn number, from 1.
        instruction: The edit instruction.
        source: The GT input of the turn.
        mask: The annotated edit region.
        target: The GT output of the turn.
        target_name: File name of the GT output (the key of the description files), or ``None`` without files.
    """

    session: str
    index: int
    instruction: str
    source: ImageRef
    mask: ImageRef
    target: ImageRef
    target_name: str | None = None


def _official_dir(root: Path) -> Path | None:
    for folder in (root, root / _TEST_SPLIT):
        if (folder / SESSIONS_FILE).is_file():
            return folder
    return None


def task_split(task: Task) -> str:
    """The split the task scores (``data.split``, default ``test``)."""
    split = str(task.data.get("split", _TEST_SPLIT))
    if split not in SPLITS:
        raise MigeBenchError(f"{task.source_file}: MagicBrush data.split must be one of {SPLITS}, got {split!r}.")
    return split


def copy_check(split: str) -> Callable[[Path], bool]:
    """Whether a folder holds ``split`` in its own layout: the unzipped test zip, or the dev parquet files."""
    if split == _TEST_SPLIT:
        return lambda root: _official_dir(root) is not None
    return lambda root: root.is_dir() and bool(split_parquet_files(root, split))


def scan(task: Task, root: Path) -> DatasetContents:
    """Reads a local copy into samples for the task's setting (see the module docstring)."""
    setting = task.setting or "all_turn"
    if setting not in SETTINGS:
        raise MigeBenchError(f"{task.source_file}: MagicBrush setting must be one of {SETTINGS}, got {setting!r}.")
    caption_kind = str(task.data.get("captions", "local"))
    split = task_split(task)
    if not copy_check(split)(root):
        raise MigeBenchError(
            f"{root} does not hold the MagicBrush {split} split for task {task.id}"
            + (" (the unzipped official test zip)." if split == _TEST_SPLIT else " (the Hugging Face parquet files).")
        )
    if split == _TEST_SPLIT:
        turns, missing, captions = _read_official(_official_dir(root), caption_kind)  # type: ignore[arg-type]
    else:
        turns, missing, captions = _read_parquet(root, split), [], {}
    sessions = _group_sessions(turns)
    samples = [
        sample
        for session_turns in sessions.values()
        for sample in _session_samples(session_turns, setting, split, caption_kind, captions)
    ]
    counts = {
        "sessions": len(sessions),
        "turns": len(turns),
        "scored": sum(sample.scored for sample in samples),
        "captioned_turns": sum("output_caption" in sample.references for sample in samples),
    }
    return DatasetContents(
        location=root,
        samples=samples,
        counts=counts,
        expected=expected_counts(task, split),
        missing_files=tuple(missing),
    )


def _read_official(folder: Path, caption_kind: str) -> tuple[list[Turn], list[Path], dict[str, dict[str, str]]]:
    sessions = json.loads(read_text_file(folder / SESSIONS_FILE))
    missing: list[Path] = []
    caption_file = _caption_file(folder, caption_kind)
    if caption_file is None:
        missing.append(folder / f"{caption_kind}_descriptions.json")
        captions: dict[str, dict[str, str]] = {}
    else:
        captions = json.loads(read_text_file(caption_file))
    turns: list[Turn] = []
    for session, records in sessions.items():
        image_dir = resolve_inside(folder / "images", str(session), what="MagicBrush session")
        for index, record in enumerate(records, start=1):
            paths = {
                key: resolve_inside(image_dir, record[key], what="MagicBrush turn")
                for key in ("input", "mask", "output")
            }
            missing.extend(path for path in paths.values() if not path.is_file())
            turns.append(
                Turn(
                    session=str(session),
                    index=index,
                    instruction=record["instruction"],
                    source=ImageRef(path=paths["input"]),
                    mask=ImageRef(path=paths["mask"]),
                    target=ImageRef(path=paths["output"]),
                    target_name=record["output"],
                )
            )
    return turns, missing, captions


def _caption_file(folder: Path, caption_kind: str) -> Path | None:
    """The description file of the requested kind; the release names it ``<kind>_descriptions.json``, the
    evaluation README ``<kind>_captions.json``."""
    candidates = (
        place / f"{caption_kind}_{suffix}.json"
        for place in (folder, folder.parent)
        for suffix in ("descriptions", "captions", "description")
    )
    return next((path for path in candidates if path.is_file()), None)


def _read_parquet(root: Path, split: str) -> list[Turn]:
    rows: list[dict[str, Any]] = read_hf_split(root, split)
    return [
        Turn(
            session=str(row["img_id"]),
            index=int(row["turn_index"]),
            instruction=row["instruction"],
            source=image_from_cell(row["source_img"], f"magicbrush {row['img_id']} turn {row['turn_index']} source"),
            mask=image_from_cell(row["mask_img"], f"magicbrush {row['img_id']} turn {row['turn_index']} mask"),
            target=image_from_cell(row["target_img"], f"magicbrush {row['img_id']} turn {row['turn_index']} target"),
        )
        for row in rows
    ]


def _group_sessions(turns: Iterable[Turn]) -> dict[str, list[Turn]]:
    """Turns by session in first-appearance order, each session sorted by turn and checked to run 1..n."""
    sessions: dict[str, list[Turn]] = {}
    for turn in turns:
        sessions.setdefault(turn.session, []).append(turn)
    for session, session_turns in sessions.items():
        session_turns.sort(key=lambda turn: turn.index)
        numbers = [turn.index for turn in session_turns]
        if numbers != list(range(1, len(numbers) + 1)):
            raise MigeBenchError(f"MagicBrush session {session}: turns {numbers} are not numbered 1..n.")
    return sessions


def _session_samples(
    turns: list[Turn], setting: str, split: str, caption_kind: str, captions: dict[str, dict[str, str]]
) -> list[Sample]:
    samples: list[Sample] = []
    for turn in turns:
        chained = setting == "final_turn" and turn.index > 1
        references: dict[str, object] = {"target_image": turn.target, "mask": turn.mask}
        caption = captions.get(turn.session, {}).get(turn.target_name or "")
        if caption is not None:
            references["output_caption"] = caption
        samples.append(
            Sample(
                id=_turn_id(turn.session, turn.index),
                kind="edit",
                inputs=ModelInputs(prompt=turn.instruction, source_image=None if chained else turn.source),
                references=references,
                metadata={
                    "session": turn.session,
                    "turn": turn.index,
                    "turns_in_session": len(turns),
                    "split": split,
                    "caption_source": caption_kind if caption is not None else "none",
                },
                chain_from=_turn_id(turn.session, turn.index - 1) if chained else None,
                scored=setting == "all_turn" or turn.index == len(turns),
            )
        )
    return samples


def _turn_id(session: str, index: int) -> str:
    return f"{session}-t{index}"


def locate(task: Task, data_root: Path | None) -> Path:
    """The folder of the copy to read (``data_root``, the default data folder or the Hugging Face cache)."""
    return locate_copy(task, data_root, copy_check(task_split(task)))


def load_magicbrush(task: Task, data_root: Path | None) -> list[Sample]:
    """Loads the task's setting from a complete local copy of its split."""
    return scan(task, locate(task, data_root)).complete_samples(task)


def fetch(task: Task, destination: Path, progress: bool = True) -> Path:
    """Downloads the public dev split's parquet files; the test split cannot be fetched (``manual_download``)."""
    split = task_split(task)
    if split == _TEST_SPLIT:
        raise MigeBenchError(
            f"{task.data.get('manual_download', 'The MagicBrush test split cannot be downloaded automatically.')} "
            f"Then check it with `mige-bench data check {task.id} --data-root DIR`."
        )
    return fetch_hub_snapshot(task, destination, progress, allow_patterns=[f"data/{split}-*", "README.md"])
