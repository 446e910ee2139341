"""Image embeddings computed once: reference embeddings on disk across runs, every embedding once per scoring chunk.

Two layers sit between the metrics and the encoders of ``metrics/encoders.py``:

- :class:`EmbeddingCache` — reference-image embeddings on disk, one ``.npy`` file per entry under
  ``$MIGE_BENCH_HOME/cache/embeddings``. The entry key hashes the image's content hash, the backbone identity
  (weights hash, architecture, libraries, device) and the preprocessing description (resize, crop, crop rounding and
  the image transform before it). Anything that can move a feature is in the key, so a change of weights or
  preprocessing is a cache miss by construction, never a stale hit; nothing is ever invalidated by hand. Writes go
  through a temporary file and an atomic rename, so concurrent processes scoring the same task (shards, two
  checkpoints at once) at worst compute an entry twice and never read a torn one.
- :class:`ImageFeatures` — per :class:`~mige_bench.metrics.backbones.Backbones`, the feature of each (image, backbone,
  crop rounding) is computed at most once per scoring chunk however many metrics ask for it (CLIP-I, CLIP-T and
  CLIP-dir all need the output's CLIP features), reference features come from memory or the disk cache when they
  were computed before, and images the runner announced ahead (:meth:`ImageFeatures.prefetch`) are decoded and
  cropped in worker processes while the encoders run on the previous chunk.

Identical pixels always get bit-identical features within a process, and across processes through the cache: they
are remembered by a digest of the cropped pixels the network sees, stored with each cache entry. The transformers
encoders already compute each image's feature independently of its batch companions on CPU (see
``HfClipEncoder._embed_pixels``), so caching, chunking and resuming never move a score there; the digest keeps that
promise for identical images where kernels are not batch-invariant (open_clip's projection, GPU GEMMs). Without it,
CLIP-dir of an output equal to its source — an undefined direction, scored 0 — would become rounding noise.

Output images are not written to the disk cache: each checkpoint's outputs are new, and hashing them would cost more
than it saves.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import multiprocessing
import os
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from mige_bench.images import ImageRef
from mige_bench.metrics.encoders import CropRounding, ImageEncoder, decode_and_crop

if TYPE_CHECKING:
    from mige_bench.metrics.backbones import Backbones

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1
"""Bumped when the entry file format or the key recipe changes; part of every key."""

AS_IS = "image used as is (no region transform)"
"""The image-transform part of the preprocessing description of reference images encoded unchanged."""

# linux/prctl.h: deliver a signal to this process when its parent exits.
_PR_SET_PDEATHSIG = 1

WORKER_EXIT_GRACE_S = 1.0
"""How long an interrupted scoring process lets its decoding workers exit on their own before terminating them."""


def default_cache_root(home: Path) -> Path:
    """Where reference embeddings live under a mige-bench home folder: ``<home>/cache/embeddings``."""
    return home / "cache" / "embeddings"


# --------------------------------------------------------------------------------------------------------------------
# On disk
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CachedEmbedding:
    """One cache entry.

    Attributes:
        feature: The L2-normalised float32 feature row.
        pixels_sha256: sha256 of the uint8 crop the network saw (the in-process identity of the pixels).
    """

    feature: np.ndarray
    pixels_sha256: bytes


class EmbeddingCache:
    """Reference-image embeddings on disk, keyed by everything that determines them.

    Entry file: :data:`_MAGIC`, the pixels digest (32 bytes), sha256 of the payload (32 bytes), then the float32
    payload (little-endian). The payload checksum makes any damaged entry a miss, never a wrong number.

    Args:
        root: Folder of the entries (created on first write).
    """

    _MAGIC = b"MIGEEMB1"
    _HEADER = len(_MAGIC) + 64

    def __init__(self, root: Path) -> None:
        self.root = root
        self._write_failed = False

    @staticmethod
    def entry_key(content_hash: str, backbone_identity: str, preprocessing: str) -> str:
        """The key of one embedding: sha256 over the format version, the image's content hash, the backbone identity
        and the preprocessing description (crop rounding and region transform included)."""
        payload = {
            "format": CACHE_FORMAT_VERSION,
            "image_sha256": content_hash,
            "backbone": backbone_identity,
            "preprocessing": preprocessing,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def path(self, key: str) -> Path:
        """The file of entry ``key`` (two-character fan-out folders keep directories small)."""
        return self.root / key[:2] / f"{key}.emb"

    def get(self, key: str) -> CachedEmbedding | None:
        """The entry of ``key``, or ``None`` when absent or damaged (then it is recomputed and rewritten)."""
        path = self.path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as error:
            logger.warning("ignoring unreadable embedding cache entry %s (%s)", path, error)
            return None
        payload = data[self._HEADER :]
        intact = (
            data.startswith(self._MAGIC)
            and len(payload) > 0
            and len(payload) % 4 == 0
            and hashlib.sha256(payload).digest() == data[len(self._MAGIC) + 32 : self._HEADER]
        )
        if not intact:
            logger.warning("ignoring damaged embedding cache entry %s; recomputing it", path)
            return None
        pixels_sha256 = data[len(self._MAGIC) : len(self._MAGIC) + 32]
        return CachedEmbedding(np.frombuffer(payload, dtype="<f4").astype(np.float32), pixels_sha256)

    def put(self, key: str, entry: CachedEmbedding) -> None:
        """Stores an entry atomically (temporary file, then rename over the final name).

        A cache that cannot be written (read-only or full disk) is reported once and scoring goes on uncached.
        """
        payload = np.ascontiguousarray(entry.feature, dtype="<f4").tobytes()
        data = self._MAGIC + entry.pixels_sha256 + hashlib.sha256(payload).digest() + payload
        path = self.path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{key}.", suffix=".tmp")
        except OSError as error:
            self._report_write_failure(error)
            return
        try:
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(data)
            os.replace(temporary, path)
        except OSError as error:
            Path(temporary).unlink(missing_ok=True)
            self._report_write_failure(error)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def _report_write_failure(self, error: OSError) -> None:
        if not self._write_failed:
            logger.warning("cannot write the embedding cache under %s (%s); continuing without it", self.root, error)
            self._write_failed = True


# --------------------------------------------------------------------------------------------------------------------
# In a scoring process
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageRequest:
    """One image a metric is about to encode, announced so that it can be prepared ahead.

    Attributes:
        image: The image file or bytes.
        backbone: ``clip`` or ``dino``.
        crop_rounding: The crop rounding of the metric's binding.
        cacheable: True for reference images (looked up in and written to the disk cache).
    """

    image: ImageRef
    backbone: str
    crop_rounding: CropRounding
    cacheable: bool = False


_MemoKey = tuple[object, str, str]
"""``(image key, backbone, crop rounding)``; the image key is a content hash for cacheable images, else the ref."""


class ImageFeatures:
    """Resolves images to L2-normalised features with as little work as the protocol allows.

    Order of lookup for each (image, backbone, crop rounding): this process's memo, the disk cache (references only),
    crops prepared by a worker process, and last decoding + cropping here. Whatever is left is normalised and run
    through the encoder in batches, then remembered.

    Args:
        backbones: Supplies the encoders and their identities.
        cache: The disk cache of reference embeddings, or ``None`` for none.

    Attributes:
        encoded: Images run through each backbone's network so far (what the cache and the memo saved is not here).
    """

    def __init__(self, backbones: Backbones, cache: EmbeddingCache | None) -> None:
        self.backbones = backbones
        self.cache = cache
        self.encoded: Counter[str] = Counter()
        self._memo: dict[_MemoKey, np.ndarray] = {}
        self._by_pixels: dict[tuple[str, bytes], np.ndarray] = {}  # (backbone, crop digest) -> feature
        self._prepared: dict[_MemoKey, tuple[Future[list[np.ndarray]], int]] = {}
        self._content_hashes: dict[ImageRef, tuple[tuple[int, int] | None, str]] = {}
        self._executor: ProcessPoolExecutor | None = None

    def batch(self, backbone: str, crop_rounding: CropRounding) -> FeatureBatch:
        """An empty batch of images to encode through ``backbone`` with ``crop_rounding``."""
        return FeatureBatch(self, backbone, crop_rounding)

    @contextmanager
    def decoding_in_workers(self, count: int) -> Iterator[ImageFeatures]:
        """Within the block, :meth:`prefetch` decodes and crops in ``count`` worker processes (none when < 1).

        Workers are forked where the platform allows (as torch's ``DataLoader`` does on Linux): they only run PIL and
        numpy, and start in milliseconds instead of re-importing torch. They ignore Ctrl-C, which reaches the whole
        process group: the parent handles it, and when the block ends with an exception (an interrupt or a failure)
        the pool is stopped without waiting on its queues (see :func:`_stop_workers`).
        """
        if count < 1:
            yield self
            return
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        executor = ProcessPoolExecutor(max_workers=count, mp_context=context, initializer=_prepare_worker)
        self._executor = executor
        finished = False
        try:
            yield self
            finished = True
        finally:
            self._executor = None
            self._prepared.clear()
            if finished:
                executor.shutdown(wait=True, cancel_futures=True)
            else:
                _stop_workers(executor, WORKER_EXIT_GRACE_S)

    def prefetch(self, requests: Iterable[ImageRequest]) -> None:
        """Starts preparing the announced images in the workers (a no-op outside :meth:`decoding_in_workers`).

        Features already in memory or on disk are loaded now instead, so those images are never decoded.
        """
        if self._executor is None:
            return
        recipes: dict[ImageRef, list[tuple[_MemoKey, str, CropRounding]]] = {}
        announced: set[_MemoKey] = set()
        for request in requests:
            key = self._memo_key(request.image, request.backbone, request.crop_rounding, request.cacheable)
            if key in self._memo or key in self._prepared or key in announced:
                continue
            announced.add(key)
            if request.cacheable and self._load_cached(key, request.backbone, request.crop_rounding):
                continue
            recipes.setdefault(request.image, []).append((key, request.backbone, request.crop_rounding))
        with _interrupts_deferred():  # a submit may start workers: a Ctrl-C waits until they are started and tracked
            for image, wanted in recipes.items():
                crops = tuple((self._encoder(backbone).preprocessing, rounding) for _, backbone, rounding in wanted)
                future = self._executor.submit(decode_and_crop, image, crops)
                for position, (key, _, _) in enumerate(wanted):
                    self._prepared[key] = (future, position)

    def precompute(self, requests: Iterable[ImageRequest]) -> None:
        """Encodes every announced image now, one batched pass per (backbone, crop rounding).

        The runner calls this per chunk before the metrics score it, so the images that share a forward pass are the
        chunk's, whatever the order of the metrics: two runs of the same chunks give bit-identical scores.
        """
        groups: dict[tuple[str, CropRounding], list[tuple[Image.Image | ImageRef, bool]]] = {}
        for request in requests:
            groups.setdefault((request.backbone, request.crop_rounding), []).append((request.image, request.cacheable))
        for (backbone, crop_rounding), items in sorted(groups.items(), key=lambda group: group[0]):
            self.resolve(list(dict.fromkeys(items)), backbone, crop_rounding)

    def release(self, images: Iterable[ImageRef]) -> None:
        """Forgets the features and prepared crops of non-cacheable images (a finished chunk's outputs), so that
        memory stays bounded and a file rewritten under the same path is read again."""
        released = set(images)
        for store in (self._memo, self._prepared):
            for key in [key for key in store if key[0] in released]:
                del store[key]

    def resolve(
        self,
        items: Sequence[tuple[Image.Image | ImageRef, bool]],
        backbone: str,
        crop_rounding: CropRounding,
    ) -> np.ndarray:
        """Float32 features ``[N, D]`` of ``(image, cacheable)`` items, row ``i`` for item ``i``.

        In-memory PIL images (derived regions, images passed by tests) are encoded every time; image references are
        looked up first and remembered after.
        """
        if not items:
            return np.empty((0, 0), dtype=np.float32)
        keys = [
            self._memo_key(item, backbone, crop_rounding, cacheable) if isinstance(item, ImageRef) else None
            for item, cacheable in items
        ]
        to_encode: dict[object, int] = {}  # memo key (or position, for PIL images) -> first item needing it
        for index, (key, (_, cacheable)) in enumerate(zip(keys, items, strict=True)):
            if key is None:
                to_encode[index] = index
            elif key not in self._memo and not (cacheable and self._load_cached(key, backbone, crop_rounding)):
                to_encode.setdefault(key, index)
        fresh = self._encode(items, keys, list(to_encode.values()), backbone, crop_rounding) if to_encode else {}
        return np.stack([self._memo[key] if key is not None else fresh[index] for index, key in enumerate(keys)])

    # ------------------------------------------------------------------------------------------------------------------

    def _encoder(self, backbone: str) -> ImageEncoder:
        return getattr(self.backbones, backbone)

    def _memo_key(self, image: ImageRef, backbone: str, crop_rounding: CropRounding, cacheable: bool) -> _MemoKey:
        return (self._content_hash(image) if cacheable else image, backbone, crop_rounding)

    def _content_hash(self, image: ImageRef) -> str:
        """The image's content hash, remembered per file state (size, mtime) so shared references hash once."""
        signature = None
        if image.path is not None:
            stat = Path(image.path).stat()
            signature = (stat.st_size, stat.st_mtime_ns)
        remembered = self._content_hashes.get(image)
        if remembered is None or remembered[0] != signature:
            remembered = (signature, image.content_hash())
            self._content_hashes[image] = remembered
        return remembered[1]

    def _disk_key(self, content_hash: str, backbone: str, crop_rounding: CropRounding) -> str:
        preprocessing = f"{self._encoder(backbone).preprocessing.describe(crop_rounding)}; {AS_IS}"
        return EmbeddingCache.entry_key(content_hash, self.backbones.embedding_identity(backbone), preprocessing)

    def _load_cached(self, key: _MemoKey, backbone: str, crop_rounding: CropRounding) -> bool:
        if self.cache is None:
            return False
        entry = self.cache.get(self._disk_key(str(key[0]), backbone, crop_rounding))
        if entry is not None:
            self._memo[key] = self._by_pixels.setdefault((backbone, entry.pixels_sha256), entry.feature)
        return entry is not None

    def _crop(
        self, item: Image.Image | ImageRef, key: _MemoKey | None, backbone: str, rounding: CropRounding
    ) -> np.ndarray:
        """The uint8 crop of one image: prepared by a worker when announced, else decoded and cropped here."""
        prepared = self._prepared.pop(key, None) if key is not None else None
        if prepared is not None:
            future, position = prepared
            return future.result()[position]
        image = item.open() if isinstance(item, ImageRef) else item
        return self._encoder(backbone).preprocessing.crop_array(image, rounding)

    def _encode(
        self,
        items: Sequence[tuple[Image.Image | ImageRef, bool]],
        keys: Sequence[_MemoKey | None],
        positions: list[int],
        backbone: str,
        crop_rounding: CropRounding,
    ) -> dict[int, np.ndarray]:
        """Features of the items at ``positions``, by position: pixels seen before reuse their feature, the rest go
        through the network in one batched pass. Keyed items are remembered (and cached on disk when cacheable)."""
        encoder = self._encoder(backbone)
        crops = [self._crop(items[index][0], keys[index], backbone, crop_rounding) for index in positions]
        digests = [hashlib.sha256(crop.tobytes()).digest() for crop in crops]
        # Sorted by digest: which images share a forward pass (and so the kernels' rounding) must not depend on the
        # order in which metrics asked for them.
        unseen = {
            digest: crop
            for digest, crop in sorted(zip(digests, crops, strict=True), key=lambda pair: pair[0])
            if (backbone, digest) not in self._by_pixels
        }
        if unseen:
            rows = encoder.embed_pixels(encoder.preprocessing.normalize(list(unseen.values()))).numpy()
            self._by_pixels.update(((backbone, digest), row) for digest, row in zip(unseen, rows, strict=True))
            self.encoded[backbone] += len(unseen)
        features = {}
        for index, digest in zip(positions, digests, strict=True):
            features[index] = vector = self._by_pixels[(backbone, digest)]
            key = keys[index]
            if key is not None:
                self._memo[key] = vector
                if items[index][1] and self.cache is not None:
                    self.cache.put(
                        self._disk_key(str(key[0]), backbone, crop_rounding), CachedEmbedding(vector, digest)
                    )
        return features


class FeatureBatch:
    """The images one metric call encodes through one backbone, deduplicated, resolved in one batched pass.

    Args:
        features: The process's :class:`ImageFeatures`.
        backbone: ``clip`` or ``dino``.
        crop_rounding: Crop rounding of the metric's binding.
    """

    def __init__(self, features: ImageFeatures, backbone: str, crop_rounding: CropRounding) -> None:
        self._features = features
        self._backbone = backbone
        self._crop_rounding = crop_rounding
        self._items: list[tuple[Image.Image | ImageRef, bool]] = []
        self._rows: dict[object, int] = {}

    def add(self, image: Image.Image | ImageRef, cacheable: bool = False) -> int:
        """Registers an image (a PIL image, deduplicated by object, or a reference, by value) and returns its row.

        Args:
            image: The image to encode.
            cacheable: True for reference images: their features may come from and go to the disk cache.
        """
        identity = (image, cacheable) if isinstance(image, ImageRef) else id(image)
        if identity not in self._rows:
            self._rows[identity] = len(self._items)
            self._items.append((image, cacheable))
        return self._rows[identity]

    def encode(self) -> np.ndarray:
        """Features of every registered image, row ``i`` for the ``i``-th registration."""
        return self._features.resolve(self._items, self._backbone, self._crop_rounding)


# --------------------------------------------------------------------------------------------------------------------
# Decoding workers and Ctrl-C
# --------------------------------------------------------------------------------------------------------------------


def _prepare_worker() -> None:
    """Initializer of the decoding workers: SIGINT is ignored, the parent alone acts on a Ctrl-C; on Linux a worker
    also dies with its parent (a SIGKILLed run would otherwise leave its workers waiting on the queue forever).

    A worker interrupted inside a queue operation prints a traceback and may die holding the queue's lock, leaving its
    siblings, and the parent waiting for them, blocked forever. Workers start with SIGINT blocked
    (:func:`_interrupts_deferred`), so one sent before this runs is discarded here instead of delivered.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))
        parent = multiprocessing.parent_process()
        if parent is not None and os.getppid() != parent.pid:  # the parent died before prctl took effect
            os._exit(1)


@contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Holds a Ctrl-C back while the block may start worker processes, and delivers it when the block ends.

    SIGINT is blocked in the calling thread (where the platform has signal masks), so workers start with it blocked
    until :func:`_prepare_worker` ignores it, whatever the start method. In the main thread, a SIGINT received
    meanwhile (by another thread) is only recorded: a ``KeyboardInterrupt`` raised mid-start could lose track of a
    started worker, which would then outlive the run, or be swallowed by an at-fork hook, losing the Ctrl-C.
    """
    received: list[int] = []
    defer = threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is not None
    previous_handler = signal.signal(signal.SIGINT, lambda signum, _: received.append(signum)) if defer else None
    previous_mask = (
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}) if hasattr(signal, "pthread_sigmask") else None
    )
    try:
        yield
    finally:
        if previous_mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
        if defer:
            signal.signal(signal.SIGINT, previous_handler)
        if received:
            signal.raise_signal(signal.SIGINT)  # handled as the restored handler says (KeyboardInterrupt by default)


def _stop_workers(executor: ProcessPoolExecutor, grace: float) -> None:
    """Shuts ``executor`` down without waiting on its queues: pending work is cancelled, and workers still running
    after ``grace`` seconds are terminated, then killed.

    Unlike ``shutdown(wait=True)``, this cannot block on a queue operation that will never complete. A second Ctrl-C
    while it waits terminates the workers at once.
    """
    # Taken before shutdown() forgets them; Python 3.14's ProcessPoolExecutor.terminate_workers() does the same.
    processes = list((getattr(executor, "_processes", None) or {}).values())
    executor.shutdown(wait=False, cancel_futures=True)
    try:
        deadline = time.monotonic() + grace
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join(grace)
            if process.is_alive():
                process.kill()
                process.join(grace)
