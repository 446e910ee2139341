"""Builders of miniatures of each benchmark's dataset format, built in temporary folders with tiny images.

Each miniature has the real record structure (file layout, JSON shapes, Hugging Face parquet with ``Image`` columns)
but only a handful of records, so loaders run on a 2-core CPU in milliseconds. Real data from ``../shared/data`` is
used only by tests marked to skip when it is absent.
"""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from PIL import Image

from mige_bench.task import Task, load_task_file, tasks_dir

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def tiny_image_bytes(color: tuple[int, int, int], size: tuple[int, int] = (16, 12), fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format=fmt)
    return buffer.getvalue()


def write_image(path: Path, color: tuple[int, int, int] = (10, 20, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tiny_image_bytes(color, fmt="JPEG" if path.suffix == ".jpg" else "PNG"))
    return path


def with_data(task: Task, **changes: Any) -> Task:
    """The task with some ``data`` arguments replaced (e.g. the expected counts of a miniature)."""
    return replace(task, data={**task.data, **changes})


def bundled_task(file_name: str) -> Task:
    return load_task_file(tasks_dir() / file_name)


# --- DreamBench ---------------------------------------------------------------------------------------------------

DREAMBENCH_SUBJECTS = {"backpack": ("backpack", 3), "cat": ("cat", 2), "bear_plushie": ("stuffed animal", 4)}
"""subject -> (class noun, number of photos): one live subject, two objects, 9 photos in all."""

OBJECT_TEMPLATES = ["a {0} {1} in the jungle", "a red {0} {1}", "a {0} {1} on top of pink fabric"]
LIVE_TEMPLATES = ["a {0} {1} in the jungle", "a {0} {1} wearing a red hat"]


def write_prompts_and_classes(path: Path) -> None:
    """``prompts_and_classes.txt`` in the official file's exact format, with fewer classes and prompts."""

    def prompt_lines(templates: list[str]) -> list[str]:
        body = [f"'{template}'.format(unique_token, class_token)," for template in templates]
        body[-1] = body[-1].rstrip(",")
        return ["prompt_list = [", *body, "]"]

    lines = ["Classes", "", "subject_name,class"]
    lines += [f"{subject},{noun}" for subject, (noun, _) in DREAMBENCH_SUBJECTS.items()]
    lines += ["", "Prompts", "", "Object Prompts", "", *prompt_lines(OBJECT_TEMPLATES)]
    lines += ["", "Live Subject Prompts", "", *prompt_lines(LIVE_TEMPLATES)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def build_dreambench_root(tmp_path: Path) -> Path:
    """``<root>/dataset/`` like the google/dreambooth repository."""
    dataset = tmp_path / "dreambench" / "dataset"
    dataset.mkdir(parents=True)
    write_prompts_and_classes(dataset / "prompts_and_classes.txt")
    for number, (subject, (_, photos)) in enumerate(DREAMBENCH_SUBJECTS.items()):
        for index in range(photos):
            write_image(dataset / subject / f"{index:02d}.jpg", (number * 40, index * 30, 90))
    return tmp_path / "dreambench"


# --- Hugging Face parquet -----------------------------------------------------------------------------------------


def write_hf_parquet(path: Path, columns: dict[str, list[Any]], image_columns: tuple[str, ...]) -> None:
    """A parquet shard as the hub stores it: written by ``datasets`` with ``Image`` features (bytes + path)."""
    import datasets

    features = {}
    for name, values in columns.items():
        if name in image_columns:
            features[name] = datasets.Image()
        elif isinstance(values[0], bool):
            features[name] = datasets.Value("bool")
        elif isinstance(values[0], int):
            features[name] = datasets.Value("int64")
        else:
            features[name] = datasets.Value("string")
    table = {
        name: [{"bytes": value, "path": None} for value in values] if name in image_columns else values
        for name, values in columns.items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(table, features=datasets.Features(features)).to_parquet(str(path))


EMU_ROWS = [
    # (idx, task, instruction, input_caption, output_caption)
    (0, "global", " Make the sky night instead of day", "A car in the daytime.", "A car at night."),
    (180, "add", "Add a double rainbow to the sky.", "Palm trees.", "Palm trees with a double rainbow."),
    (360, "add", "Add a spatula", "enough for everyone", "enough for everyone"),
    (540, "text", "Change the sign to say OPEN", "A sign saying CLOSED", "A sign saying OPEN"),
    (720, "remove", "Remove the dog", "A dog on a boat", "A dog on a boat"),
]


def emu_columns(rows: list[tuple[int, str, str, str, str]], split: str) -> dict[str, list[Any]]:
    return {
        "instruction": [row[2] for row in rows],
        "image": [tiny_image_bytes((row[0] % 256, 0, 0)) for row in rows],
        "task": [row[1] for row in rows],
        "split": [split] * len(rows),
        "idx": [row[0] for row in rows],
        "hash": [f"hash{row[0]}" for row in rows],
        "input_caption": [row[3] for row in rows],
        "output_caption": [row[4] for row in rows],
    }


def build_emu_edit_root(tmp_path: Path) -> Path:
    """``data/test-*.parquet`` (2 shards) and ``data/validation-*.parquet`` like the hub repository."""
    root = tmp_path / "emu_edit"
    write_hf_parquet(root / "data" / "test-00000-of-00002.parquet", emu_columns(EMU_ROWS[:3], "test"), ("image",))
    write_hf_parquet(root / "data" / "test-00001-of-00002.parquet", emu_columns(EMU_ROWS[3:], "test"), ("image",))
    write_hf_parquet(
        root / "data" / "validation-00000-of-00001.parquet", emu_columns(EMU_ROWS[:2], "validation"), ("image",)
    )
    return root


# --- MagicBrush ---------------------------------------------------------------------------------------------------

MAGICBRUSH_SESSIONS = {"30": 1, "139": 3, "242": 2}
"""img_id -> number of turns: 3 sessions, 6 turns."""


def magicbrush_instruction(session: str, turn: int) -> str:
    return f"edit {turn} of {session}"


def build_magicbrush_official_root(tmp_path: Path) -> Path:
    """The unzipped test folder: ``test/edit_sessions.json``, ``test/images/<id>/``, description files."""
    test = tmp_path / "magicbrush" / "test"
    sessions: dict[str, list[dict[str, str]]] = {}
    local: dict[str, dict[str, str]] = {}
    global_: dict[str, dict[str, str]] = {}
    for session, turns in MAGICBRUSH_SESSIONS.items():
        folder = test / "images" / session
        write_image(folder / f"{session}-input.png", (1, 1, 1))
        local[session] = {f"{session}-input.png": f"local input {session}"}
        global_[session] = {f"{session}-input.png": f"global input {session}"}
        sessions[session] = []
        for turn in range(1, turns + 1):
            source = f"{session}-input.png" if turn == 1 else f"{session}-output{turn - 1}.png"
            write_image(folder / f"{session}-output{turn}.png", (turn * 50, 0, 0))
            write_image(folder / f"{session}-mask{turn}.png", (255, 255, 255))
            local[session][f"{session}-output{turn}.png"] = f"local {session} {turn}"
            global_[session][f"{session}-output{turn}.png"] = f"global {session} {turn}"
            sessions[session].append(
                {
                    "input": source,
                    "mask": f"{session}-mask{turn}.png",
                    "output": f"{session}-output{turn}.png",
                    "instruction": magicbrush_instruction(session, turn),
                }
            )
    (test / "edit_sessions.json").write_text(json.dumps(sessions), encoding="utf-8")
    (test / "local_descriptions.json").write_text(json.dumps(local), encoding="utf-8")
    (test / "global_descriptions.json").write_text(json.dumps(global_), encoding="utf-8")
    return tmp_path / "magicbrush"


def build_magicbrush_parquet_root(tmp_path: Path) -> Path:
    """``data/dev-*.parquet`` like ``osunlp/MagicBrush`` (rows in hub order: by session, then turn)."""
    rows = [(session, turn) for session, turns in MAGICBRUSH_SESSIONS.items() for turn in range(1, turns + 1)]
    columns = {
        "img_id": [session for session, _ in rows],
        "turn_index": [turn for _, turn in rows],
        "source_img": [tiny_image_bytes((turn - 1, 0, 0)) for _, turn in rows],
        "mask_img": [tiny_image_bytes((255, 255, 255)) for _ in rows],
        "instruction": [magicbrush_instruction(session, turn) for session, turn in rows],
        "target_img": [tiny_image_bytes((turn, 0, 0)) for _, turn in rows],
    }
    root = tmp_path / "magicbrush_hf"
    write_hf_parquet(root / "data" / "dev-00000-of-00001.parquet", columns, ("source_img", "mask_img", "target_img"))
    return root


# --- MIGEBench ----------------------------------------------------------------------------------------------------


def migebench_record(subset: str, idx: int) -> dict[str, Any]:
    """A record shaped like the two real ones in MIGE's example_subject_edit.json (authors' path prefix included)."""
    prefix = f"/path/to/MIGEBench/{subset}"
    entity = f"{prefix}/{subset}_entity/{idx}_entity_black.jpg"
    source = f"{prefix}/{subset}_source/{idx}_source.jpg"
    if subset == "add":
        multi_prompt = "Add<imagehere>to the bottom center of<imagehere>. The signboard is small."
        entity_path = [entity, source]
    else:
        multi_prompt = "replace the pencil in<ImageHere>with<ImageHere>in the center"
        entity_path = [source, entity]
    return {
        "image": f"{prefix}/{subset}_target/{idx}_target.jpg",
        "source_path": [source],
        "caption": f"{subset} instruction {idx} ",
        "width": 1024,
        "height": 1024,
        "aesthetic": 5.9,
        "object": "a signboard" if subset == "add" else "pen",
        "multi_prompt": multi_prompt,
        "target_caption": f"target caption {subset} {idx}",
        "clip_t": 0.26,
        "mask_path": [f"{prefix}/{subset}_mask/{idx}_mask.jpg"],
        "entity_path": entity_path,
        "entity_dino": "a signboard",
        "entity_path_white": [f"{prefix}/{subset}_entity/{idx}_entity_white.jpg"],
        "idx": idx,
        "crop": "0",
    }


MIGEBENCH_IDS = {"add": [21, 3], "replace": [20, 7, 8]}


def build_migebench_root(tmp_path: Path) -> Path:
    """``add_bench.json``, ``replace_bench.json`` and the image folders, like the hub repository."""
    root = tmp_path / "MIGEBench"
    for subset, ids in MIGEBENCH_IDS.items():
        records = [migebench_record(subset, idx) for idx in ids]
        root.mkdir(parents=True, exist_ok=True)
        (root / f"{subset}_bench.json").write_text(json.dumps(records), encoding="utf-8")
        for record in records:
            for key in ("image", "source_path", "mask_path", "entity_path", "entity_path_white"):
                paths = record[key] if isinstance(record[key], list) else [record[key]]
                for recorded in paths:
                    write_image(root.joinpath(*Path(recorded).parts[-3:]), (record["idx"], 5, 5))
    return root
