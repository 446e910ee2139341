"""Backbones: which CLIP, DINO and LPIPS weights a run uses, where they come from, and what exactly they were.

A backbone spec maps ``clip`` / ``dino`` / ``lpips`` to one of:

- a Hugging Face id (``openai/clip-vit-base-patch32``), looked up offline in ``$MIGE_BENCH_HOME/<id>`` (default
  ``~/.cache/mige-bench``), then in the Hugging Face cache; never downloaded unless ``allow_download=True``;
- a local directory written by ``save_pretrained`` (transformers ``CLIPModel`` + tokenizer / ``ViTModel``);
- for ``clip`` only, open_clip weights: a folder with ``open_clip_config.json``, a checkpoint file next to such a
  config, or ``<open_clip architecture>@<checkpoint file>`` (e.g. ``ViT-B-32-quickgelu@/weights/openai_b32.pt``);
- for ``lpips``: ``alex`` (AlexNet LPIPS v0.1; the AlexNet trunk comes from torchvision's checkpoint file, looked up
  offline) or a path to that checkpoint file;
- ``smoke``: a tiny, randomly initialised, seeded model built in-process through the same code paths. Scores made
  with it mean nothing and are marked not comparable.

Encoders load lazily on first use, once per process, and are shared by every metric (CLIP-I, CLIP-T and CLIP-dir use
one CLIP). With weights missing offline, :class:`MigeBenchError` names the exact command that fetches them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import torch

from mige_bench.errors import MigeBenchError
from mige_bench.metrics.embedding_cache import EmbeddingCache, ImageFeatures, default_cache_root
from mige_bench.metrics.encoders import (
    ClipEncoder,
    DinoEncoder,
    HfClipEncoder,
    ImageEncoder,
    LpipsNet,
    OpenClipEncoder,
)

logger = logging.getLogger(__name__)

BackboneName = Literal["clip", "dino", "lpips"]

DEFAULT_SPEC: dict[str, str] = {
    "clip": "openai/clip-vit-base-patch32",
    "dino": "facebook/dino-vits16",
    "lpips": "alex",
}

SMOKE = "smoke"
SMOKE_SEED = 0

DINO_LAYER_NORM_EPS = 1e-6
"""LayerNorm epsilon of the original DINO ViT (torch.hub ``dino_vits16``); the HF hub config says 1e-12 (trap 12)."""

ALEXNET_CHECKPOINT = "alexnet-owt-7be5be79.pth"
ALEXNET_URL = f"https://download.pytorch.org/models/{ALEXNET_CHECKPOINT}"

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")

# Smoke model sizes: small enough for a 2-core CPU test, at the real input resolution so that preprocessing (resize,
# crop rounding) runs exactly as with real weights.
_SMOKE_CLIP_TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
_SMOKE_CLIP_VISION = {
    "image_size": 224,
    "patch_size": 32,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
}
_SMOKE_DINO = {
    "image_size": 224,
    "patch_size": 16,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
}


def mige_bench_home() -> Path:
    """The local weights root: ``$MIGE_BENCH_HOME``, else ``~/.cache/mige-bench``."""
    return Path(os.environ.get("MIGE_BENCH_HOME", "~/.cache/mige-bench")).expanduser()


# --------------------------------------------------------------------------------------------------------------------
# Resolution: spec value -> local files
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightSource:
    """Where one backbone's weights are.

    Attributes:
        name: ``clip``, ``dino`` or ``lpips``.
        spec: The spec value as given.
        loader: ``transformers`` (``save_pretrained`` folder), ``open_clip``, ``lpips`` or ``smoke``.
        path: The folder or file holding the weights (``None`` for smoke).
        open_clip_architecture: Built-in open_clip architecture name, when given as ``ARCH@FILE``.
    """

    name: str
    spec: str
    loader: Literal["transformers", "open_clip", "lpips", "smoke"]
    path: Path | None = None
    open_clip_architecture: str | None = None


@dataclass
class MissingWeights(Exception):
    """Raised by resolution when weights are not on this machine; ``command`` fetches them."""

    name: str
    spec: str
    command: str
    notes: list[str] = field(default_factory=list)


def _hub_snapshot(repo_id: str, allow_download: bool) -> Path | None:
    """The Hugging Face cache snapshot of ``repo_id``, downloaded only if allowed; ``None`` if absent."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=not allow_download))
    except LocalEntryNotFoundError:
        return None


def _resolve_hub_id(name: str, spec: str, home: Path, allow_download: bool) -> WeightSource:
    local = home / spec
    if (local / "config.json").is_file():
        return WeightSource(name, spec, "transformers", local)
    snapshot = _hub_snapshot(spec, allow_download)
    if snapshot is not None and (snapshot / "config.json").is_file():
        return WeightSource(name, spec, "transformers", snapshot)
    raise MissingWeights(name, spec, f"hf download {spec} --local-dir {local}")


def _resolve_open_clip_file(name: str, spec: str) -> WeightSource | None:
    architecture, separator, file = spec.partition("@")
    if separator and Path(file).expanduser().is_file() and not Path(spec).exists():
        return WeightSource(name, spec, "open_clip", Path(file).expanduser(), architecture)
    path = Path(spec).expanduser()
    if path.is_file():
        if not (path.parent / "open_clip_config.json").is_file():
            raise MigeBenchError(
                f"CLIP checkpoint {path} has no open_clip_config.json beside it; name its architecture as "
                f"'<open_clip architecture>@{path}' (e.g. 'ViT-B-32-quickgelu@{path}')."
            )
        return WeightSource(name, spec, "open_clip", path)
    return None


def resolve(name: str, spec: str, home: Path, allow_download: bool = False) -> WeightSource:
    """Finds the weights one spec value points to, without loading them.

    Raises:
        MissingWeights: a hub id or the AlexNet checkpoint is not on this machine.
        MigeBenchError: a path that does not exist or does not hold the right kind of model.
    """
    if spec == SMOKE:
        return WeightSource(name, spec, "smoke")
    if name == "lpips":
        return _resolve_lpips(spec, home)
    if name == "clip":
        open_clip_source = _resolve_open_clip_file(name, spec)
        if open_clip_source is not None:
            return open_clip_source
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return WeightSource(name, spec, "transformers", path)
        if name == "clip" and (path / "open_clip_config.json").is_file():
            return WeightSource(name, spec, "open_clip", path)
        raise MigeBenchError(
            f"{name} backbone folder {path} has no config.json; save the model there with save_pretrained."
        )
    if _HUB_ID.match(spec) and not spec.startswith((".", "/", "~")):
        return _resolve_hub_id(name, spec, home, allow_download)
    raise MigeBenchError(
        f"{name} backbone {spec!r} is neither an existing folder or file nor a Hugging Face id like "
        f"{DEFAULT_SPEC.get(name, 'organisation/model')!r}; fix the path."
    )


def _resolve_lpips(spec: str, home: Path) -> WeightSource:
    if spec != "alex":
        path = Path(spec).expanduser()
        if path.is_file():
            return WeightSource("lpips", spec, "lpips", path)
        raise MigeBenchError(
            f"lpips backbone {spec!r} is not supported; use 'alex' (AlexNet LPIPS v0.1), 'smoke', or the path of "
            f"torchvision's {ALEXNET_CHECKPOINT}."
        )
    candidates = [
        home / "torchvision" / ALEXNET_CHECKPOINT,
        Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_CHECKPOINT,
    ]
    for candidate in candidates:
        if candidate.is_file():
            return WeightSource("lpips", spec, "lpips", candidate)
    raise MissingWeights(
        "lpips",
        spec,
        f"curl -L --create-dirs -o {candidates[0]} {ALEXNET_URL}",
        [f"the torch hub cache {candidates[1]} works too"],
    )


# --------------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------------


def _seeded(build: Callable[[], Any]) -> Any:
    """Runs ``build`` with the global torch RNG seeded to :data:`SMOKE_SEED`, leaving the caller's RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SMOKE_SEED)
        return build()


def smoke_clip_tokenizer() -> Any:
    """A byte-level CLIP tokenizer with no merges (every character is a token), built without any file."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    characters = sorted(ByteLevel.alphabet())
    tokens = characters + [character + "</w>" for character in characters] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={token: index for index, token in enumerate(tokens)}, merges=[])


def build_smoke_clip() -> tuple[Any, Any, dict[str, Any]]:
    """A tiny random ``CLIPModel`` and its tokenizer; returns ``(model, tokenizer, build config)``."""
    from transformers import CLIPConfig, CLIPModel

    tokenizer = smoke_clip_tokenizer()
    text = {
        **_SMOKE_CLIP_TEXT,
        "vocab_size": len(tokenizer),
        "max_position_embeddings": 77,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    build_config = {"text_config": text, "vision_config": _SMOKE_CLIP_VISION, "projection_dim": 16}
    model = _seeded(lambda: CLIPModel(CLIPConfig(**build_config)))
    return model, tokenizer, build_config


def build_smoke_dino() -> tuple[Any, dict[str, Any]]:
    """A tiny random DINO-style ``ViTModel`` (no pooler); returns ``(model, build config)``."""
    from transformers import ViTConfig, ViTModel

    build_config = {**_SMOKE_DINO, "layer_norm_eps": DINO_LAYER_NORM_EPS}
    model = _seeded(lambda: ViTModel(ViTConfig(**build_config), add_pooling_layer=False))
    return model, build_config


def _new_lpips_alex() -> Any:
    """The ``lpips`` package's AlexNet LPIPS v0.1 with its calibrated linear layers and a random AlexNet trunk."""
    import lpips

    with warnings.catch_warnings():
        # lpips passes the deprecated ``pretrained=False`` to torchvision; the trunk is loaded by us afterwards.
        warnings.simplefilter("ignore", UserWarning)
        return lpips.LPIPS(net="alex", version="0.1", pretrained=True, pnet_rand=True, verbose=False)


def lpips_linear_weights() -> Path:
    """The calibrated LPIPS v0.1 linear-layer weights shipped inside the ``lpips`` package."""
    import lpips

    return Path(lpips.__file__).parent / "weights" / "v0.1" / "alex.pth"


def load_lpips(trunk_checkpoint: Path) -> Any:
    """AlexNet LPIPS v0.1 with the AlexNet trunk read from torchvision's ImageNet checkpoint file (no download)."""
    model = _new_lpips_alex()
    trunk = torch.load(trunk_checkpoint, map_location="cpu", weights_only=True)
    # lpips splits torchvision's ``features`` into slices but keeps the layer indices: slice2.3.weight is features.3.
    renamed = {name: trunk[f"features.{name.split('.', 1)[1]}"] for name in model.net.state_dict()}
    model.net.load_state_dict(renamed)
    return model


def _load_transformers_clip(path: Path) -> tuple[Any, Any]:
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    config = CLIPConfig.from_pretrained(path)
    if config.model_type != "clip":
        raise MigeBenchError(f"clip backbone {path} holds a {config.model_type!r} model, not a CLIPModel.")
    # Checked by hand: transformers 5 silently builds a 3-token tokenizer when the files are missing.
    has_tokenizer = (path / "tokenizer.json").is_file() or (
        (path / "vocab.json").is_file() and (path / "merges.txt").is_file()
    )
    if not has_tokenizer:
        raise MigeBenchError(
            f"clip backbone {path} has no CLIP tokenizer files (tokenizer.json, or vocab.json + merges.txt); "
            "save the tokenizer there too with tokenizer.save_pretrained."
        )
    return CLIPModel.from_pretrained(path), CLIPTokenizer.from_pretrained(path)


def _load_transformers_dino(path: Path) -> Any:
    from transformers import ViTConfig, ViTModel

    config = ViTConfig.from_pretrained(path)
    if config.model_type != "vit":
        raise MigeBenchError(f"dino backbone {path} holds a {config.model_type!r} model, not a DINO ViTModel.")
    return ViTModel.from_pretrained(path, add_pooling_layer=False, layer_norm_eps=DINO_LAYER_NORM_EPS)


def _load_open_clip(source: WeightSource) -> tuple[Any, Any]:
    import open_clip

    path = source.path
    assert path is not None
    if source.open_clip_architecture is not None:
        model_name, checkpoint = source.open_clip_architecture, path
    elif path.is_dir():
        model_name, checkpoint = f"local-dir:{path}", None
    else:
        model_name, checkpoint = f"local-dir:{path.parent}", path
    model = open_clip.create_model(model_name, load_weights=checkpoint is None)
    if checkpoint is not None:
        open_clip.load_checkpoint(model, str(checkpoint), strict=True)
    return model, open_clip.get_tokenizer(model_name)


# --------------------------------------------------------------------------------------------------------------------
# Provenance
# --------------------------------------------------------------------------------------------------------------------


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weight_files(path: Path) -> list[Path]:
    """The weight files a loader reads from ``path``: the file itself, or a folder's safetensors files when it has
    any (transformers prefers them), else its ``.bin`` / ``.pth`` / ``.pt`` files."""
    if path.is_file():
        return [path]
    files = sorted(child for child in path.iterdir() if child.suffix in _WEIGHT_SUFFIXES and child.is_file())
    safetensors = [child for child in files if child.suffix == ".safetensors"]
    return safetensors or files


def combined_sha256(named_hashes: Mapping[str, str]) -> str:
    """One hash for several files: the file's own hash when there is one, else sha256 of ``"name:hash\\n"`` lines."""
    if len(named_hashes) == 1:
        return next(iter(named_hashes.values()))
    lines = "".join(f"{name}:{value}\n" for name, value in sorted(named_hashes.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def state_dict_sha256(module: torch.nn.Module) -> str:
    """sha256 over a module's tensors (names and bytes, in order): identifies in-process smoke weights."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _library_versions(loader: str) -> dict[str, str]:
    packages = {
        "transformers": ["torch", "transformers", "tokenizers", "pillow"],
        "open_clip": ["torch", "open_clip_torch", "pillow"],
        "lpips": ["torch", "torchvision", "lpips", "pillow"],
        "smoke": ["torch", "transformers", "torchvision", "lpips", "pillow"],
    }[loader]
    versions = {}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


@dataclass
class LoadedBackbone:
    """A loaded encoder and the record of what it is."""

    encoder: Any
    provenance: dict[str, Any]
    _identity: str | None = field(default=None, repr=False)

    def identity(self) -> str:
        """A hash of everything about this encoder that can move a feature: weights hash, architecture (the module
        tree, which names every layer size and LayerNorm epsilon), library versions, and device type. Where the
        weights were read from, and under which spec, does not matter."""
        if self._identity is None:
            record = {
                key: value
                for key, value in self.provenance.items()
                if key not in ("spec", "resolved_path", "weight_files", "comparable")
            }
            record["architecture_sha256"] = hashlib.sha256(repr(self.encoder.model).encode()).hexdigest()
            record["device_type"] = self.encoder.device.type
            self._identity = hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()
        return self._identity


def _provenance(source: WeightSource, encoder: Any, files: list[Path], extra: Mapping[str, Any]) -> dict[str, Any]:
    file_hashes = {file.name: _sha256_file(file) for file in files}
    if isinstance(encoder, ImageEncoder):
        preprocessing = encoder.preprocessing.describe()
    else:
        preprocessing = "RGB uint8 -> output resized to the reference size (PIL bicubic) -> [-1, 1]"
    return {
        "spec": source.spec,
        "loader": source.loader,
        "resolved_path": str(source.path) if source.path is not None else None,
        "weight_sha256": combined_sha256(file_hashes) if file_hashes else extra.get("weight_sha256"),
        "weight_files": file_hashes,
        "preprocessing": preprocessing,
        "libraries": _library_versions(source.loader),
        "comparable": source.loader != "smoke",
        **{key: value for key, value in extra.items() if key != "weight_sha256"},
    }


def _load_smoke(source: WeightSource, device: str) -> LoadedBackbone:
    if source.name == "clip":
        model, tokenizer, build_config = build_smoke_clip()
        encoder: Any = HfClipEncoder(model, tokenizer, device)
    elif source.name == "dino":
        model, build_config = build_smoke_dino()
        encoder = DinoEncoder(model, device)
    else:
        model = _seeded(_new_lpips_alex)
        build_config = {"net": "alex", "version": "0.1", "trunk": "random", "linear_layers": "lpips package"}
        encoder = LpipsNet(model, device)
    extra = {"seed": SMOKE_SEED, "config": build_config, "weight_sha256": state_dict_sha256(model)}
    return LoadedBackbone(encoder, _provenance(source, encoder, [], extra))


def load(source: WeightSource, device: str) -> LoadedBackbone:
    """Loads the encoder for a resolved source (no caching; see :class:`Backbones`)."""
    if source.loader == "smoke":
        return _load_smoke(source, device)
    assert source.path is not None
    logger.info("loading %s backbone %r from %s", source.name, source.spec, source.path)
    try:
        if source.loader == "lpips":
            encoder: Any = LpipsNet(load_lpips(source.path), device)
            files = [source.path, lpips_linear_weights()]
        elif source.loader == "open_clip":
            encoder = OpenClipEncoder(*_load_open_clip(source), device)
            files = weight_files(source.path)
        elif source.name == "clip":
            encoder = HfClipEncoder(*_load_transformers_clip(source.path), device)
            files = weight_files(source.path)
        else:
            encoder = DinoEncoder(_load_transformers_dino(source.path), device)
            files = weight_files(source.path)
    except (OSError, RuntimeError, KeyError, ValueError) as error:
        raise MigeBenchError(
            f"{source.name} backbone {source.spec!r} at {source.path} could not be loaded ({error}); "
            "re-download or re-save it."
        ) from error
    return LoadedBackbone(encoder, _provenance(source, encoder, files, {}))


_LOADED: dict[tuple[str, str, str, str | None, str], LoadedBackbone] = {}
"""Process-wide encoder cache keyed by the resolved source and device: every metric and every ``Backbones`` object
with the same weights shares one encoder."""


def _cache_key(source: WeightSource, device: str) -> tuple[str, str, str, str | None, str]:
    path = str(source.path.resolve()) if source.path is not None else None
    return (source.name, source.loader, source.open_clip_architecture or "", path, device)


# --------------------------------------------------------------------------------------------------------------------
# The object metrics receive
# --------------------------------------------------------------------------------------------------------------------


class Backbones:
    """The set of backbones of one run, loaded lazily and shared.

    Args:
        spec: Overrides of :data:`DEFAULT_SPEC` (``{"clip": "<hub id | dir | checkpoint | smoke>", ...}``).
        device: Torch device the encoders run on.
        home: Local weights root (default :func:`mige_bench_home`).
        allow_download: Fetch missing Hugging Face weights into the HF cache instead of failing.

    Raises:
        MigeBenchError: an unknown backbone name.
    """

    def __init__(
        self,
        spec: Mapping[str, str] | None = None,
        device: str = "cpu",
        *,
        home: Path | None = None,
        allow_download: bool = False,
    ) -> None:
        unknown = sorted(set(spec or {}) - set(DEFAULT_SPEC))
        if unknown:
            raise MigeBenchError(
                f"Unknown backbone {unknown[0]!r}; the backbones are {', '.join(DEFAULT_SPEC)} "
                "(e.g. --backbone clip=<hub id or folder>)."
            )
        self.spec: dict[str, str] = {**DEFAULT_SPEC, **(spec or {})}
        self.device = device
        self.home = home if home is not None else mige_bench_home()
        self.allow_download = allow_download
        self._used: dict[str, LoadedBackbone] = {}
        self._features: ImageFeatures | None = None

    @classmethod
    def smoke(cls, device: str = "cpu") -> Backbones:
        """Every backbone tiny and random: for tests and the offline demo (not comparable)."""
        return cls(dict.fromkeys(DEFAULT_SPEC, SMOKE), device)

    @property
    def comparable(self) -> bool:
        """False when any backbone is ``smoke``: such scores must never appear next to real ones."""
        return SMOKE not in self.spec.values()

    @property
    def clip(self) -> ClipEncoder:
        """The shared CLIP encoder."""
        return self._get("clip").encoder

    @property
    def dino(self) -> DinoEncoder:
        """The shared DINO encoder."""
        return self._get("dino").encoder

    @property
    def lpips(self) -> LpipsNet:
        """The shared LPIPS network."""
        return self._get("lpips").encoder

    @property
    def features(self) -> ImageFeatures:
        """Where metrics get image features: once per chunk per backbone, references from the embedding cache
        ``<home>/cache/embeddings``. Runs with smoke backbones keep no disk cache unless one is set with
        :meth:`use_embedding_cache` (their features mean nothing, and tests must not write to the user's home)."""
        if self._features is None:
            cache = EmbeddingCache(default_cache_root(self.home)) if self.comparable else None
            self._features = ImageFeatures(self, cache)
        return self._features

    def use_embedding_cache(self, cache: EmbeddingCache | None) -> None:
        """Replaces the disk cache of reference embeddings (``None``: no disk cache)."""
        self.features.cache = cache

    def embedding_identity(self, name: str) -> str:
        """What identifies backbone ``name``'s features in the embedding cache (see :meth:`LoadedBackbone.identity`)."""
        return self._get(name).identity()

    def ensure_available(self, names: Iterable[str] | None = None) -> None:
        """Checks, without loading, that the named backbones' weights are on this machine (all of them by default).

        Call it before a long generation so that missing weights fail the run first, all listed at once.

        Raises:
            MigeBenchError: listing one fetch command per missing backbone.
        """
        missing: list[MissingWeights] = []
        for name in names if names is not None else self.spec:
            try:
                resolve(name, self.spec[name], self.home, self.allow_download)
            except MissingWeights as error:
                missing.append(error)
        if missing:
            raise MigeBenchError(_missing_message(missing))

    def load(self, names: Iterable[str]) -> None:
        """Loads the named backbones now (e.g. the union of the metrics' ``backbones_used``), so that
        :meth:`provenance` carries their weight hashes before any image is scored."""
        for name in names:
            self._get(name)

    def provenance(self) -> dict[str, dict[str, Any]]:
        """Per backbone: spec, loader, resolved path, weight sha256 (per file and combined; seed + config for smoke),
        preprocessing, library versions, comparability. Backbones no metric used are listed as ``{"spec", "used":
        False}``."""
        record: dict[str, dict[str, Any]] = {}
        for name, spec in self.spec.items():
            loaded = self._used.get(name)
            record[name] = {**loaded.provenance, "used": True} if loaded else {"spec": spec, "used": False}
        return record

    def _get(self, name: str) -> LoadedBackbone:
        if name not in self._used:
            try:
                source = resolve(name, self.spec[name], self.home, self.allow_download)
            except MissingWeights as error:
                raise MigeBenchError(_missing_message([error])) from None
            key = _cache_key(source, self.device)
            if key not in _LOADED:
                _LOADED[key] = load(source, self.device)
            self._used[name] = _LOADED[key]
        return self._used[name]


def _missing_message(missing: list[MissingWeights]) -> str:
    names = ", ".join(f"{error.name} ({error.spec})" for error in missing)
    lines = [
        f"Backbone weights not found on this machine for {names}; mige-bench never downloads at run time, so "
        "fetch them with:"
    ]
    for error in missing:
        lines.append(f"  {error.command}")
        lines.extend(f"    ({note})" for note in error.notes)
    lines.append(
        "or point --backbone <name>=<folder> at a save_pretrained copy, or use --backbone <name>=smoke for a "
        "not-comparable dry run."
    )
    return "\n".join(lines)
