"""`data check` reports counts, missing files and unreadable images; `data fetch` downloads resumably."""

from __future__ import annotations

import errno
import http.server
import os
import socket
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from dataset_miniatures import bundled_task, with_data

from mige_bench.data_store import check_dataset, fetch_dataset
from mige_bench.errors import MigeBenchError
from mige_bench.loaders.local_copy import download_url

DREAMBENCH_MINIATURE = {
    "reference_images": {"backpack": "02.jpg", "cat": "01.jpg", "bear_plushie": "00.jpg"},
    "expected": {"subjects": 3, "images": 9, "prompts": 8},
}


def test_a_complete_copy_checks_ok(dreambench_root: Path) -> None:
    report = check_dataset(with_data(bundled_task("dreambench_mige.yaml"), **DREAMBENCH_MINIATURE), dreambench_root)
    assert report.ok
    assert report.counts == {"subjects": 3, "images": 9, "prompts": 8}
    text = report.render()
    assert "  images         9  ok\n" in text
    assert text.endswith("Result: OK")


def test_missing_and_unreadable_images_and_wrong_counts_are_all_reported(dreambench_root: Path) -> None:
    (dreambench_root / "dataset" / "cat" / "01.jpg").unlink()
    (dreambench_root / "dataset" / "backpack" / "00.jpg").write_bytes(b"not a jpeg")
    report = check_dataset(
        with_data(bundled_task("dreambench_mige.yaml"), **DREAMBENCH_MINIATURE), dreambench_root, progress=False
    )
    assert not report.ok
    assert report.missing_files == (dreambench_root / "dataset" / "cat" / "01.jpg",)
    assert [name for name, _ in report.unreadable_images] == [str(dreambench_root / "dataset/backpack/00.jpg")]
    assert report.count_mismatches == {"images": (8, 9), "prompts": (6, 8)}
    text = report.render()
    assert "MISMATCH (expected 9)" in text
    assert "Missing files (1):" in text
    assert "Unreadable images (1):" in text
    assert text.endswith("Result: PROBLEMS FOUND")


def test_check_counts_the_magicbrush_dev_parquet(magicbrush_parquet_root: Path) -> None:
    task = with_data(bundled_task("magicbrush_dev_final_turn.yaml"), expected={"sessions": 3, "turns": 6})
    report = check_dataset(task, magicbrush_parquet_root, progress=False)
    assert report.ok
    assert report.counts == {"sessions": 3, "turns": 6, "scored": 3, "captioned_turns": 0}


def test_real_dreambench_images_all_decode(shared_data: Path) -> None:
    report = check_dataset(bundled_task("dreambench_mige.yaml"), shared_data / "dreambench", progress=False)
    assert report.counts == {"subjects": 30, "images": 158, "prompts": 750}
    assert report.ok, report.render()


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files with HTTP range support, like GitHub's codeload, and records the ranges asked for."""

    ranges_requested: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        body = (Path(self.directory) / self.path.lstrip("/")).read_bytes()
        self.ranges_requested.append(self.headers.get("Range", ""))
        start = int(self.headers["Range"].split("=")[1].rstrip("-")) if self.headers.get("Range") else 0
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        self.wfile.write(body[start:])

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    served = tmp_path / "served"
    served.mkdir()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *args: _RangeHandler(*args, directory=str(served))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", served
    server.shutdown()


def test_download_resumes_a_partial_file(file_server: tuple[str, Path], tmp_path: Path) -> None:
    url, served = file_server
    payload = bytes(range(256)) * 4000
    (served / "archive.tar.gz").write_bytes(payload)
    target = tmp_path / "out" / "archive.tar.gz"
    target.parent.mkdir()
    target.with_name("archive.tar.gz.part").write_bytes(payload[:100_000])
    download_url(f"{url}/archive.tar.gz", target, progress=False)
    assert _RangeHandler.ranges_requested[-1] == "bytes=100000-"
    assert target.read_bytes() == payload
    assert not target.with_name("archive.tar.gz.part").exists()


def test_dreambench_fetch_extracts_the_dataset_folder_of_the_pinned_snapshot(
    dreambench_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = with_data(bundled_task("dreambench_mige.yaml"), **DREAMBENCH_MINIATURE)
    commit = task.data["commit"]
    archive = tmp_path / "github.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(dreambench_root / "dataset", arcname=f"dreambooth-{commit}/dataset")
        tar.add(dreambench_root / "dataset" / "prompts_and_classes.txt", arcname=f"dreambooth-{commit}/README.md")
    requested: list[str] = []

    def fake_download(url: str, target: Path, progress: bool) -> Path:
        requested.append(url)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(archive.read_bytes())
        return target

    monkeypatch.setattr("mige_bench.loaders.dreambench.download_url", fake_download)
    folder = fetch_dataset(task, progress=False)
    assert requested == [f"https://codeload.github.com/google/dreambooth/tar.gz/{commit}"]
    assert folder == tmp_path / "mige_home" / "data" / "dreambench"
    assert sorted(path.name for path in folder.iterdir()) == [f".fetched-{commit}", "dataset"]
    assert check_dataset(task, None, progress=False).ok  # found in the default data folder
    fetch_dataset(task, progress=False)
    assert len(requested) == 1  # a finished fetch is not repeated


def test_hub_fetch_downloads_only_the_public_magicbrush_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, object]] = []
    monkeypatch.setattr("huggingface_hub.snapshot_download", lambda repo_id, **kwargs: calls.append(kwargs))
    with pytest.raises(MigeBenchError, match=r"password-protected zip.*magicbrush_dev@official:all_turn"):
        fetch_dataset(bundled_task("magicbrush_all_turn.yaml"), tmp_path / "mb", progress=False)
    assert calls == []
    fetch_dataset(bundled_task("magicbrush_dev_all_turn.yaml"), tmp_path / "mb", progress=False)
    assert calls == [
        {
            "repo_type": "dataset",
            "revision": None,
            "local_dir": tmp_path / "mb",
            "allow_patterns": ["data/dev-*", "README.md"],
        }
    ]


@pytest.fixture
def refusing_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Points huggingface_hub at a local port that refuses connections (bound, never listening), with an empty cache.

    The library read HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE at import, so its constants are patched instead.
    """
    with socket.socket() as closed_port:
        closed_port.bind(("127.0.0.1", 0))
        monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", f"http://127.0.0.1:{closed_port.getsockname()[1]}")
        monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf_cache"))
        monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
        yield


@pytest.mark.parametrize(
    ("offline", "reason"),
    [
        (False, f"ConnectError: [Errno {errno.ECONNREFUSED}] {os.strerror(errno.ECONNREFUSED)}"),
        (True, "HF_HUB_OFFLINE is set"),
    ],
    ids=["unreachable", "HF_HUB_OFFLINE"],
)
def test_hub_fetch_without_network_names_the_hub_id_and_the_download_command(
    refusing_hub: None, offline: bool, reason: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", offline)
    with pytest.raises(MigeBenchError) as raised:
        fetch_dataset(bundled_task("emu_edit_mige.yaml"), tmp_path / "emu", progress=False)
    assert str(raised.value) == (
        f"Cannot download facebook/emu_edit_test_set from the Hugging Face hub ({reason}); check the network "
        "connection, or on a machine with internet run `hf download facebook/emu_edit_test_set --repo-type dataset "
        "--local-dir DIR` and pass --data-root DIR."
    )


def test_hub_fetch_without_network_names_the_same_files_and_revision_to_download(
    refusing_hub: None, tmp_path: Path
) -> None:
    task = with_data(bundled_task("magicbrush_dev_all_turn.yaml"), hub_revision="v1.0")
    with pytest.raises(MigeBenchError, match=r"Cannot download osunlp/MagicBrush from the Hugging Face hub") as raised:
        fetch_dataset(task, tmp_path / "mb", progress=False)
    assert (
        "`hf download osunlp/MagicBrush --repo-type dataset --revision v1.0 --include 'data/dev-*' --include README.md "
        "--local-dir DIR`" in str(raised.value)
    )
