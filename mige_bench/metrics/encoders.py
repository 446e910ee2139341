"""Encoders with their pinned preprocessing: the one place where images and captions become features.

Every metric that needs a network goes through these classes (via ``metrics/embedding_cache.py``, which remembers
features and prepares images in worker processes), so batching lives in one place. Preprocessing is written out here
in PIL + numpy instead of delegating to a library's image processor, because those processors changed behaviour
across versions and disagree with each other (PROTOCOLS.md traps 3, 5, 11): the steps below are the protocol, and
tests check them against the HF and torchvision implementations.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import torch
from PIL import Image

from mige_bench.images import ImageRef
from mige_bench.metrics.functional import resize_to_reference
from mige_bench.metrics.regions import RegionPair

logger = logging.getLogger(__name__)

CropRounding = Literal["hf", "torchvision"]
"""How a centre crop places an odd margin (PROTOCOLS.md trap 11): ``hf`` floors the offset like transformers'
``CLIPImageProcessor`` (MIGE's metric code); ``torchvision`` rounds half to even like ``transforms.CenterCrop`` (OpenAI
``clip`` preprocessing, MagicBrush's metric code)."""
CROP_ROUNDINGS: tuple[str, ...] = get_args(CropRounding)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

DEFAULT_BATCH_SIZE = 32


# --------------------------------------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------------------------------------


def crop_offset(margin: int, rounding: CropRounding) -> int:
    """Offset of a centre crop that leaves ``margin`` pixels in total: ``margin // 2`` (hf) or ``round(margin / 2)``
    with Python's round-half-to-even (torchvision)."""
    return margin // 2 if rounding == "hf" else round(margin / 2)


@dataclass(frozen=True)
class ImagePreprocessing:
    """RGB → resize the shorter side (PIL bicubic) → centre crop → /255 → normalise per channel.

    The resized longer side is ``int(shorter_target * long / short)`` (floor), as both transformers and torchvision
    compute it. Input is 8-bit RGB (0–255) and is scaled to [0, 1] exactly once (trap 5).

    Attributes:
        resize_shorter: Target length of the shorter side.
        crop: Side of the square centre crop.
        mean: Per-channel mean subtracted after scaling to [0, 1].
        std: Per-channel standard deviation divided by.
    """

    resize_shorter: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def resize(self, image: Image.Image) -> Image.Image:
        """Resizes ``image`` so that its shorter side is :attr:`resize_shorter` (aspect ratio kept)."""
        width, height = image.size
        short, long = min(width, height), max(width, height)
        new_long = int(self.resize_shorter * long / short)
        size = (self.resize_shorter, new_long) if width <= height else (new_long, self.resize_shorter)
        if size == image.size:
            return image
        return image.resize(size, resample=Image.Resampling.BICUBIC)

    def center_crop(self, image: Image.Image, rounding: CropRounding) -> Image.Image:
        """Crops the central :attr:`crop` × :attr:`crop` square, placing odd margins by ``rounding``."""
        width, height = image.size
        left, top = crop_offset(width - self.crop, rounding), crop_offset(height - self.crop, rounding)
        return image.crop((left, top, left + self.crop, top + self.crop))

    def crop_array(self, image: Image.Image, rounding: CropRounding) -> np.ndarray:
        """The geometric steps (RGB, resize, centre crop) of one image: a ``[crop, crop, 3]`` uint8 array.

        This is the expensive, per-image part; it runs in decoding worker processes during scoring.
        """
        return np.asarray(self.center_crop(self.resize(image.convert("RGB")), rounding), dtype=np.uint8)

    def normalize(self, crops: Sequence[np.ndarray]) -> torch.Tensor:
        """The arithmetic steps of a batch of :meth:`crop_array` results: ``[N, 3, crop, crop]`` float32 model input.

        Elementwise float32 operations, so the values are bit-identical whether images are normalised one at a time
        or stacked; the result is made contiguous (NCHW) so that the network sees the same memory layout either way.
        """
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        unit = np.stack(crops).astype(np.float32) / np.float32(255.0)
        return torch.from_numpy(np.ascontiguousarray(((unit - mean) / std).transpose(0, 3, 1, 2)))

    def __call__(self, images: Sequence[Image.Image], rounding: CropRounding) -> torch.Tensor:
        """Returns the ``[N, 3, crop, crop]`` float32 model input for a list of RGB images."""
        return self.normalize([self.crop_array(image, rounding) for image in images])

    def describe(self, rounding: CropRounding | None = None) -> str:
        """One line naming every step, for provenance records."""
        crop_rule = {
            "hf": "offset floored (HF CLIPImageProcessor)",
            "torchvision": "offset rounded half to even (torchvision CenterCrop)",
            None: "offset rule per metric binding crop_rounding (hf: floor, torchvision: round half to even)",
        }[rounding]
        return (
            f"RGB uint8 -> resize shorter side to {self.resize_shorter} (PIL bicubic) -> centre crop {self.crop} "
            f"({crop_rule}) -> /255 -> normalise mean {self.mean} std {self.std}"
        )


def clip_preprocessing(image_size: int) -> ImagePreprocessing:
    """CLIP's protocol preprocessing (PROTOCOLS.md §1 ``clip_i``): resize to and crop at the model's input size."""
    return ImagePreprocessing(image_size, image_size, CLIP_MEAN, CLIP_STD)


def dino_preprocessing() -> ImagePreprocessing:
    """DINO's protocol preprocessing (PROTOCOLS.md §1 ``dino``): resize 256, crop 224, ImageNet statistics — not the
    HF ``ViTImageProcessor``, which resizes straight to 224 (trap 3)."""
    return ImagePreprocessing(256, 224, IMAGENET_MEAN, IMAGENET_STD)


# --------------------------------------------------------------------------------------------------------------------
# Image and text encoders
# --------------------------------------------------------------------------------------------------------------------


def _projected_embedding(output: Any) -> torch.Tensor:
    """The embedding returned by ``CLIPModel.get_{image,text}_features``: a tensor in transformers < 5, an output
    object whose ``pooler_output`` holds the projected embedding in transformers ≥ 5 (trap 4)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class ImageEncoder(ABC):
    """Maps RGB images to L2-normalised feature rows, in batches of :attr:`batch_size`.

    Attributes:
        preprocessing: The pinned preprocessing applied before the network.
        device: Torch device the network runs on.
        batch_size: Images per forward pass.
    """

    def __init__(self, preprocessing: ImagePreprocessing, device: str) -> None:
        self.preprocessing = preprocessing
        self.device = torch.device(device)
        self.batch_size = DEFAULT_BATCH_SIZE

    @abstractmethod
    def _embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Raw (unnormalised) features ``[N, D]`` of preprocessed pixels ``[N, 3, H, W]`` already on the device."""

    def encode_images(self, images: Sequence[Image.Image], crop_rounding: CropRounding = "hf") -> torch.Tensor:
        """L2-normalised float32 features ``[N, D]`` (on the CPU) of RGB images, in input order."""
        chunks = [
            self.embed_pixels(self.preprocessing(images[start : start + self.batch_size], crop_rounding))
            for start in range(0, len(images), self.batch_size)
        ]
        return torch.cat(chunks) if chunks else torch.empty(0, 0)

    def embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """L2-normalised float32 features ``[N, D]`` (on the CPU) of preprocessed pixels ``[N, 3, H, W]``, run through
        the network :attr:`batch_size` images at a time."""
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(pixels), self.batch_size):
                batch = pixels[start : start + self.batch_size].to(self.device, non_blocking=True)
                features = self._embed_pixels(batch).float()
                chunks.append(torch.nn.functional.normalize(features, dim=-1).cpu())
        return torch.cat(chunks) if chunks else torch.empty(0, 0)


def decode_and_crop(image: ImageRef, crops: Sequence[tuple[ImagePreprocessing, CropRounding]]) -> list[np.ndarray]:
    """Decodes one image file once and returns its :meth:`ImagePreprocessing.crop_array` for each requested
    (preprocessing, crop rounding): the work of a decoding worker process (picklable, PIL + numpy only)."""
    opened = image.open()
    return [preprocessing.crop_array(opened, rounding) for preprocessing, rounding in crops]


class DinoEncoder(ImageEncoder):
    """DINO ViT image features: the CLS token of the last hidden state after the final LayerNorm (PROTOCOLS.md §1).

    ``ViTModel.last_hidden_state`` is already normalised by ``ViTModel.layernorm``; the HF ``pooler_output`` (a dense +
    tanh head that DINO checkpoints do not contain, hence random) is never used (trap 3).
    """

    def __init__(self, model: Any, device: str) -> None:
        super().__init__(dino_preprocessing(), device)
        self.model = model.to(self.device).eval()

    def _embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixels).last_hidden_state[:, 0]


@dataclass(frozen=True)
class TextEncoding:
    """Text features and which captions did not fit the context.

    Attributes:
        features: L2-normalised float32 ``[N, D]`` rows (CPU).
        truncated: ``truncated[i]`` is True when caption ``i`` was cut to the context length.
    """

    features: torch.Tensor
    truncated: tuple[bool, ...]


class ClipEncoder(ImageEncoder):
    """A CLIP model: image features (projected embedding) and text features in one space.

    Texts are tokenised to :attr:`context_length` tokens (77 for CLIP); longer captions are truncated to
    start token + the first ``context_length − 2`` tokens + end token, and flagged (the OpenAI ``clip.tokenize``
    default raises instead).
    """

    context_length: int

    @abstractmethod
    def _token_counts(self, texts: Sequence[str]) -> list[int]:
        """Number of tokens of each text, start and end tokens included, before truncation."""

    @abstractmethod
    def _embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Raw text features ``[N, D]``, captions truncated to the context."""

    def encode_texts(self, texts: Sequence[str]) -> TextEncoding:
        """L2-normalised text features of ``texts`` and their truncation flags."""
        truncated = tuple(count > self.context_length for count in self._token_counts(texts))
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                features = self._embed_texts(texts[start : start + self.batch_size]).float()
                chunks.append(torch.nn.functional.normalize(features, dim=-1).cpu())
        return TextEncoding(torch.cat(chunks) if chunks else torch.empty(0, 0), truncated)


class HfClipEncoder(ClipEncoder):
    """CLIP through transformers' ``CLIPModel`` + ``CLIPTokenizer``."""

    def __init__(self, model: Any, tokenizer: Any, device: str) -> None:
        super().__init__(clip_preprocessing(model.config.vision_config.image_size), device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.context_length = model.config.text_config.max_position_embeddings

    def _embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        # ``get_image_features`` step by step, with the projection applied one row at a time: CPU GEMM kernels round
        # the [N, hidden] x [hidden, D] product differently with N (1e-6 on ViT-B/32), which would make an image's
        # feature depend on the images batched with it; the transformer body does not (its GEMMs have N x tokens rows).
        pooled = self.model.vision_model(pixel_values=pixels).pooler_output  # [N, hidden], post-LayerNorm CLS
        return torch.cat([self.model.visual_projection(row) for row in pooled.split(1)])  # [N, D]

    def _token_counts(self, texts: Sequence[str]) -> list[int]:
        return [len(ids) for ids in self.tokenizer(list(texts))["input_ids"]]

    def _embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(
            list(texts), padding="max_length", truncation=True, max_length=self.context_length, return_tensors="pt"
        ).to(self.device)
        output = self.model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        return _projected_embedding(output)


class OpenClipEncoder(ClipEncoder):
    """CLIP through open_clip (checkpoint files and ``open_clip_config.json`` folders)."""

    def __init__(self, model: Any, tokenizer: Any, device: str) -> None:
        image_size = model.visual.image_size
        side = image_size if isinstance(image_size, int) else image_size[0]
        super().__init__(clip_preprocessing(side), device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.context_length = tokenizer.context_length

    def _embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    def _token_counts(self, texts: Sequence[str]) -> list[int]:
        return [len(self.tokenizer.encode(text)) + 2 for text in texts]

    def _embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(list(texts)).to(self.device))


# --------------------------------------------------------------------------------------------------------------------
# LPIPS
# --------------------------------------------------------------------------------------------------------------------


def to_signed_unit_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB image as a ``[1, 3, H, W]`` float32 tensor in [-1, 1] (LPIPS' input range)."""
    unit = np.asarray(image.convert("RGB"), dtype=np.float32) / np.float32(255.0)
    return torch.from_numpy(unit * 2.0 - 1.0).permute(2, 0, 1).unsqueeze(0)


class LpipsNet:
    """LPIPS v0.1 (``lpips`` package) on RGB pairs at the reference's size.

    Whole image: the package's score, ``Σ_l mean_{h,w} w_l · (φ̂_l(a) − φ̂_l(b))²``. With a ``keep`` mask (background
    preservation): the region outside ``keep`` is blackened in both images (so the edit does not leak in through
    receptive fields) and the package's spatial map (``spatial=True``, upsampled to the input size) is averaged over
    the kept pixels only.
    """

    def __init__(self, model: Any, device: str) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()

    def distance(self, pair: RegionPair) -> float:
        """LPIPS distance of one pair; ``pair.output`` is resized to the reference's size (PIL bicubic) first."""
        output, reference = pair.blackened()
        output = resize_to_reference(output, reference)
        first = to_signed_unit_tensor(output).to(self.device)
        second = to_signed_unit_tensor(reference).to(self.device)
        with torch.inference_mode():
            if pair.keep is None:
                return float(self.model(first, second).item())
            self.model.spatial = True
            try:
                distance_map = self.model(first, second)[0, 0].cpu().numpy()
            finally:
                self.model.spatial = False
        return float(distance_map[pair.keep].mean())
