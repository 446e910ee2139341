"""Opening, validating and writing images: the one place that touches image files.

Every image that enters mige-bench (dataset inputs, references, generated outputs) is opened by :func:`open_rgb`, which
turns every odd format into 8-bit RGB the same way and refuses what cannot be scored honestly, with the file named in
the error. Every image that mige-bench writes goes through :func:`save_png_atomic`, so a crash never leaves a
half-written file under its final name.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from mige_bench.errors import MigeBenchError
from mige_bench.run_folder import write_bytes_atomic

logger = logging.getLogger(__name__)

# PIL modes with more than 8 bits per channel (plus the I;16 family).
_DEEP_MODES = frozenset({"I", "F"})

MAX_PIXELS = 64_000_000
"""Largest image accepted (e.g. 8000x8000). Larger files are refused rather than silently downscaled: a benchmark
image that large is almost certainly a mistake, and decoding it could exhaust memory (decompression bombs)."""

MIN_SIDE = 8
"""Smallest width or height accepted: a 1x1 "image" is a broken file or a placeholder, not something to score."""


@dataclass(frozen=True)
class ImageRef:
    """A lazily opened image: a file on disk, or encoded bytes (e.g. a Hugging Face datasets row).

    Samples hold references, not decoded pixels, so a 3,000-sample task costs no memory until it is used.

    Attributes:
        path: File on disk, or ``None`` when the image is held as bytes.
        data: Encoded image bytes (PNG/JPEG/...), or ``None`` when the image is a file.
        label: Human-readable name used in error messages when there is no path (e.g. ``"emu_edit row 17 image"``).
    """

    path: Path | None = None
    data: bytes | None = field(default=None, repr=False)
    label: str = ""

    def __post_init__(self) -> None:
        if (self.path is None) == (self.data is None):
            raise ValueError("ImageRef needs exactly one of path or data")

    @classmethod
    def from_pil(cls, image: Image.Image, label: str = "") -> ImageRef:
        """Wraps an in-memory image (encoded losslessly as PNG)."""
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return cls(data=buffer.getvalue(), label=label)

    @property
    def name(self) -> str:
        return str(self.path) if self.path is not None else (self.label or "<in-memory image>")

    def open(self) -> Image.Image:
        """Decodes the image as 8-bit RGB (see :func:`open_rgb`)."""
        source = self.path if self.path is not None else io.BytesIO(self.data)  # type: ignore[arg-type]
        return open_rgb(source, name=self.name)

    def content_hash(self) -> str:
        """SHA-256 of the encoded bytes: identifies the image whatever its path.

        Raises:
            MigeBenchError: the file is missing or unreadable, naming it.
        """
        if self.data is not None:
            return hashlib.sha256(self.data).hexdigest()
        try:
            return hashlib.sha256(Path(self.path).read_bytes()).hexdigest()  # type: ignore[arg-type]
        except FileNotFoundError as error:
            raise MigeBenchError(f"{self.name}: image file not found.") from error
        except OSError as error:
            raise MigeBenchError(f"{self.name}: cannot read the image file ({error.strerror or error}).") from error


def to_rgb(image: Image.Image, name: str = "<image>") -> Image.Image:
    """Converts an 8-bit image to RGB with PIL's ``.convert("RGB")``, as every protocol and reference script does.

    That conversion drops alpha (the colour under a transparent pixel is kept, as in the reference code) and maps
    palette, grey and CMYK images the standard way. Deeper images (16-bit or 32-bit integer, float) are refused:
    ``.convert("RGB")`` clips them at 255, which turns most of a 16-bit image white, and rescaling them instead
    would score them differently from the reference code.

    Raises:
        MigeBenchError: the image is deeper than 8 bits per channel, with the file named and the fix.
    """
    if image.mode == "RGB":
        return image
    if image.mode in _DEEP_MODES or image.mode.startswith("I;16"):
        raise MigeBenchError(
            f"{name}: {image.mode} image with more than 8 bits per channel. The protocols open images with PIL's "
            f'.convert("RGB"), which clips such values at 255; save it as 8-bit RGB (e.g. a normal PNG or JPEG) first.'
        )
    return image.convert("RGB")


def open_rgb(source: str | os.PathLike | io.BytesIO, name: str | None = None) -> Image.Image:
    """Opens an image file (or bytes) and returns it fully decoded as 8-bit RGB.

    Raises:
        MigeBenchError: the file is missing, empty, not an image, truncated, larger than :data:`MAX_PIXELS`, or
            smaller than 1x1 — with the file named.
    """
    name = name or str(source)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise MigeBenchError(f"{name}: image file not found.")
        if path.stat().st_size == 0:
            raise MigeBenchError(f"{name}: the image file is empty (0 bytes); regenerate or re-download it.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise MigeBenchError(
                        f"{name}: image is {width}x{height}, over the {MAX_PIXELS:,}-pixel limit; downscale it first."
                    )
                if min(width, height) < MIN_SIDE:
                    raise MigeBenchError(
                        f"{name}: image is {width}x{height}, below the {MIN_SIDE}-pixel minimum side; it is not a "
                        "usable image."
                    )
                image.load()
                return to_rgb(image, name)
    except MigeBenchError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise MigeBenchError(f"{name}: image is over the {MAX_PIXELS:,}-pixel limit ({error}).") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise MigeBenchError(f"{name}: not a readable image ({error}); the file is corrupt or not an image.") from error


def save_png_atomic(image: Image.Image, path: Path) -> None:
    """Writes ``image`` as PNG to ``path`` via a temporary file and a rename, so a crash leaves no partial file.

    The PNG is written without timestamps or other metadata, so the same pixels always give the same bytes.
    """
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    write_bytes_atomic(path, buffer.getvalue())
