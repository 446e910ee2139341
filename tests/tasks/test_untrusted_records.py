"""Dataset files are untrusted input: paths that escape the data folder and undecodable text are refused clearly."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest
from dataset_miniatures import bundled_task, migebench_record

from mige_bench.errors import MigeBenchError
from mige_bench.images import open_rgb
from mige_bench.loaders.magicbrush import load_magicbrush
from mige_bench.loaders.migebench import load_migebench
from mige_bench.paths import resolve_inside
from mige_bench.sample import ModelInputs, Sample


def test_resolve_inside_refuses_escapes(tmp_path: Path) -> None:
    assert resolve_inside(tmp_path, "a/b.png") == tmp_path / "a" / "b.png"
    for hostile in ("../../etc/passwd", "/etc/passwd", "a/../../outside.png"):
        with pytest.raises(MigeBenchError, match="points outside the data folder"):
            resolve_inside(tmp_path, hostile)


def test_migebench_record_pointing_outside_the_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "MIGEBench"
    root.mkdir()
    record = migebench_record("add", 1)
    record["image"] = "../../etc/passwd"
    (root / "add_bench.json").write_text(json.dumps([record]), encoding="utf-8")
    with pytest.raises(MigeBenchError, match=r"MIGEBench record path '\.\./etc/passwd' points outside"):
        load_migebench(bundled_task("migebench_add.yaml"), root)


def test_magicbrush_turn_pointing_outside_the_root_is_refused(magicbrush_official_root: Path) -> None:
    sessions_file = magicbrush_official_root / "test" / "edit_sessions.json"
    sessions = json.loads(sessions_file.read_text())
    first_session = next(iter(sessions))
    sessions[first_session][0]["input"] = "../../../../etc/passwd"
    sessions_file.write_text(json.dumps(sessions))
    with pytest.raises(MigeBenchError, match=r"MagicBrush turn path '\.\./\.\./\.\./\.\./etc/passwd' points outside"):
        load_magicbrush(bundled_task("magicbrush_all_turn.yaml"), magicbrush_official_root)


def test_non_utf8_dataset_file_is_named(migebench_root: Path) -> None:
    (migebench_root / "add_bench.json").write_bytes(b'[{"multi_prompt": "caf\xe9"}]')
    with pytest.raises(MigeBenchError, match=r"add_bench\.json: not valid UTF-8"):
        load_migebench(bundled_task("migebench_add.yaml"), migebench_root)


def test_empty_prompt_is_refused() -> None:
    with pytest.raises(MigeBenchError, match="sample x: the prompt is empty"):
        Sample(id="x", kind="edit", inputs=ModelInputs(prompt="   "))


def test_unsafe_sample_id_is_refused() -> None:
    with pytest.raises(MigeBenchError, match="not filename-safe"):
        Sample(id="../escape", kind="edit", inputs=ModelInputs(prompt="edit"))


def test_a_20000_pixel_square_png_is_refused_without_decoding(tmp_path: Path) -> None:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    path = tmp_path / "huge.png"
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )
    with pytest.raises(MigeBenchError, match="over the 64,000,000-pixel limit"):
        open_rgb(path)
