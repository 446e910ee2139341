"""``folder``: images made elsewhere, read from ``<dir>/<sample_id>[_<k>].png|jpg|jpeg|webp``.

This is how papers re-score released outputs: ``--model folder --model-args dir=PATH``. The images are decoded and
re-written as PNG into the run folder (lossless, so the pixels scored are exactly the pixels given). A sample whose
file is missing fails with the expected path named; the run lists every failure and exits non-zero.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from mige_bench.errors import MigeBenchError
from mige_bench.images import open_rgb
from mige_bench.models.base import Generator
from mige_bench.sample import Sample, output_stem

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def image_files(directory: Path) -> dict[str, Path]:
    """File stem -> path of every image in ``directory``; two images with one stem are refused (which to score?)."""
    files: dict[str, Path] = {}
    for path in sorted(directory.iterdir()):
        if path.suffix.lower() in IMAGE_SUFFIXES:
            if path.stem in files:
                raise MigeBenchError(f"{directory}: both {files[path.stem].name} and {path.name} exist; keep one.")
            files[path.stem] = path
    return files


def unmatched_files(directory: Path, samples: Sequence[Sample], images_per_sample: int) -> list[Path]:
    """Images in ``directory`` named after no output of ``samples``: a run never reads them, so they go unscored.

    Usually a naming mistake (``0001.png`` for a sample id, ``<id>.png`` where several images per sample are
    expected) that would otherwise show only as "missing file" failures.
    """
    expected = {sample.output_name(k, images_per_sample) for sample in samples for k in range(images_per_sample)}
    return [path for stem, path in image_files(directory).items() if stem not in expected]


class FolderGenerator(Generator):
    """Reads pre-generated images from a folder.

    Args:
        dir: The folder holding ``<sample_id>.png`` (one image per sample) or ``<sample_id>_<k>.png`` (several).
    """

    name = "folder"

    def __init__(self, dir: str) -> None:
        self.directory = Path(dir).expanduser()
        if not self.directory.is_dir():
            raise MigeBenchError(f"Image folder {self.directory} does not exist.")
        self.files = image_files(self.directory)
        if not self.files:
            raise MigeBenchError(
                f"Image folder {self.directory} holds no images ({', '.join(IMAGE_SUFFIXES)}); expected files named "
                "<sample_id>.png or <sample_id>_<k>.png."
            )

    @property
    def settings(self) -> dict[str, Any]:
        # The folder only: how many files it holds is its content, not a setting, and must not change the manifest,
        # so that adding a missing image and running again resumes the run.
        return {"dir": str(self.directory.resolve())}

    def generate(self, samples: Sequence[Sample], seeds: Sequence[int]) -> list[Image.Image]:
        # The runner passes all outputs of a sample together, k ascending (see Generator.generate).
        per_sample = Counter(sample.id for sample in samples)
        seen: Counter[str] = Counter()
        images = []
        for sample in samples:
            k = seen[sample.id]
            seen[sample.id] += 1
            stem = output_stem(sample.id, k, per_sample[sample.id])
            path = self.files.get(stem)
            if path is None:
                raise MigeBenchError(f"missing file {self.directory / stem}.png (or .jpg/.jpeg/.webp)")
            images.append(open_rgb(path))
        return images
