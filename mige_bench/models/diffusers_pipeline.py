"""``diffusers``: any supported diffusers pipeline as a generator, with presets that pin each baseline's settings.

``--model diffusers --model-args preset=instruct-pix2pix`` runs a named baseline with its published inference
settings (steps, guidance scales, resolution, scheduler; each with its source, see :data:`PRESETS` and
``docs/models.md``). ``--model-args pretrained=<hub id or folder>,pipeline=<diffusers class>`` runs any checkpoint of
a supported pipeline family; further ``key=value`` pairs override keyword arguments of the pipeline's ``__call__``
(``num_inference_steps=20``, ``guidance_scale=3``) and are recorded in the manifest like everything else.

How a sample becomes a pipeline call depends only on the pipeline family and on which inputs the sample carries
(source image, subject images, multimodal prompt), never on the task: see the ``*Family`` classes below.

Seeding and batching: every output image gets its own CPU ``torch.Generator`` seeded with the runner's per-image seed,
so its noise does not depend on the device or on the other images of its batch. By default every image is also its
own pipeline call: a batched forward pass moves some pixels by one level (matrix kernels are chosen per batch shape,
measured on CPU for InstructPix2Pix and OmniGen), which would make an image depend on its batch. ``batch_calls=1``
passes compatible requests as lists in one call (faster on GPU, reproducible only at the same ``--batch-size``).
"""

from __future__ import annotations

import inspect
import itertools
import json
import logging
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from PIL import Image, ImageOps

from mige_bench.errors import MigeBenchError
from mige_bench.models.base import Generator
from mige_bench.sample import IMAGE_PLACEHOLDER, Sample, SampleKind

logger = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

# ---------------------------------------------------------------------------------------------------------------------
# Presets: the published inference settings of each baseline, with where each setting comes from
# ---------------------------------------------------------------------------------------------------------------------

IP2P_EDIT_CLI = "timothybrooks/instruct-pix2pix edit_cli.py defaults"


@dataclass(frozen=True)
class Preset:
    """One baseline: which weights, which pipeline, and the call settings its authors published.

    Attributes:
        pretrained: Hugging Face hub id of the diffusers-format weights.
        pipeline: Name of the diffusers pipeline class.
        call_kwargs: Keyword arguments of the pipeline call pinned by the preset.
        source_call_kwargs: Call arguments that replace ``call_kwargs`` for samples with a source image (editing), for
            models whose authors publish different settings for editing.
        scheduler: diffusers scheduler class swapped in at load time, or ``None`` to keep the checkpoint's own.
        resolution: Long side the source image is fitted to before the call (InstructPix2Pix's rule, see
            :func:`fit_to_resolution`), or ``None`` when the pipeline sizes its inputs itself.
        dtype: Weight dtype the authors ran on GPU (CPU runs default to fp32).
        gated: Whether the hub repository requires accepting a licence before downloading.
        output_size: How the output size is decided, in words (recorded in the manifest).
        sources: Setting name -> where its value comes from.
    """

    pretrained: str
    pipeline: str
    call_kwargs: Mapping[str, Any]
    sources: Mapping[str, str]
    output_size: str
    source_call_kwargs: Mapping[str, Any] = field(default_factory=dict)
    scheduler: str | None = None
    resolution: int | None = None
    dtype: str = "bf16"
    gated: bool = False


_IP2P_SOURCES = {
    "num_inference_steps": f"{IP2P_EDIT_CLI} (--steps 100)",
    "guidance_scale": f"{IP2P_EDIT_CLI} (--cfg-text 7.5)",
    "image_guidance_scale": f"{IP2P_EDIT_CLI} (--cfg-image 1.5)",
    "resolution": f"{IP2P_EDIT_CLI} (--resolution 512, long side fitted, sides multiples of 64)",
    "scheduler": "edit_cli.py samples with k-diffusion Euler ancestral; the hub model card swaps in "
    "EulerAncestralDiscreteScheduler",
}

QWEN_OUTPUT_SIZE = (
    "about 1 megapixel at the source's aspect ratio, whatever its size: width sqrt(1024^2 * w/h) and height width / "
    "(w/h), each rounded to a multiple of 32 (640x480 -> 1184x896, 48x32 -> 1248x832)"
)

PRESETS: dict[str, Preset] = {
    "instruct-pix2pix": Preset(
        pretrained="timbrooks/instruct-pix2pix",
        pipeline="StableDiffusionInstructPix2PixPipeline",
        call_kwargs={"num_inference_steps": 100, "guidance_scale": 7.5, "image_guidance_scale": 1.5},
        scheduler="EulerAncestralDiscreteScheduler",
        resolution=512,
        dtype="fp16",
        output_size="the source image fitted to a 512 long side, both sides multiples of 64 (aspect kept by a centre "
        "crop of at most 63 px)",
        sources=_IP2P_SOURCES,
    ),
    "magicbrush": Preset(
        # A diffusers conversion of MagicBrush-epoch-52-step-4999.ckpt published by a third party (the ImagenHub
        # author) and used by ImagenHub and later papers; the MagicBrush authors release only the .ckpt.
        pretrained="vinesmsuic/magicbrush-jul7",
        pipeline="StableDiffusionInstructPix2PixPipeline",
        call_kwargs={"num_inference_steps": 100, "guidance_scale": 7.5, "image_guidance_scale": 1.5},
        scheduler="EulerAncestralDiscreteScheduler",
        resolution=512,
        dtype="fp16",
        output_size="as instruct-pix2pix",
        sources={
            **_IP2P_SOURCES,
            "pretrained": "third-party diffusers conversion of the official MagicBrush-epoch-52-step-4999.ckpt "
            "(provenance of the conversion unconfirmed)",
            "all settings": "MagicBrush README runs the checkpoint through InstructPix2Pix's edit_cli.py with its "
            "defaults",
        },
    ),
    "omnigen": Preset(
        pretrained="Shitao/OmniGen-v1-diffusers",
        pipeline="OmniGenPipeline",
        call_kwargs={
            "num_inference_steps": 50,
            "guidance_scale": 2.5,
            "img_guidance_scale": 1.6,
            "height": 1024,
            "width": 1024,
            "max_input_image_size": 1024,
        },
        source_call_kwargs={"guidance_scale": 2.0},
        output_size="the source image's size after OmniGen's input processing (long side <= 1024, multiples of 16) "
        "when the sample has one, else 1024x1024",
        sources={
            "num_inference_steps": "OmniGenPipeline example and OmniGen inference docs (50)",
            "guidance_scale": "diffusers OmniGen docs: 2.5 for subject-driven generation, 2.0 for image editing",
            "img_guidance_scale": "diffusers OmniGen docs (1.6)",
            "height/width": "diffusers OmniGen docs (1024x1024; editing keeps the input size)",
            "max_input_image_size": "OmniGenPipeline default (1024)",
        },
    ),
    "blip-diffusion": Preset(
        pretrained="Salesforce/blipdiffusion",
        pipeline="BlipDiffusionPipeline",
        call_kwargs={
            "num_inference_steps": 25,
            "guidance_scale": 7.5,
            "height": 512,
            "width": 512,
            "neg_prompt": "over-exposure, under-exposure, saturated, duplicate, out of frame, lowres, cropped, worst "
            "quality, low quality, jpeg artifacts, morbid, mutilated, out of frame, ugly, bad anatomy, bad "
            "proportions, deformed, blurry, duplicate",
        },
        dtype="fp16",
        output_size="512x512",
        sources={
            "all settings": "BlipDiffusionPipeline example in diffusers (25 steps, guidance 7.5, 512x512, its "
            "negative prompt); scheduler PNDM as shipped"
        },
    ),
    "flux-kontext": Preset(
        pretrained="black-forest-labs/FLUX.1-Kontext-dev",
        pipeline="FluxKontextPipeline",
        call_kwargs={"num_inference_steps": 28, "guidance_scale": 2.5},
        gated=True,
        output_size="FLUX.1 Kontext's preferred resolution closest to the source aspect ratio (about 1 megapixel)",
        sources={
            "guidance_scale": "FLUX.1-Kontext-dev model card and FluxKontextPipeline example (2.5)",
            "num_inference_steps": "FluxKontextPipeline default (28)",
            "height/width": "Black Forest Labs' reference sampling (flux repository, prepare_kontext): the output "
            "takes the Kontext resolution the source is resized to",
        },
    ),
    "qwen-image-edit": Preset(
        pretrained="Qwen/Qwen-Image-Edit",
        pipeline="QwenImageEditPipeline",
        call_kwargs={"num_inference_steps": 50, "true_cfg_scale": 4.0, "negative_prompt": " "},
        output_size=QWEN_OUTPUT_SIZE,
        sources={
            "all settings": "Qwen/Qwen-Image-Edit model card (50 steps, true_cfg_scale 4.0, negative prompt ' ')",
            "height/width": "QwenImageEditPipeline default (calculate_dimensions(1024 * 1024, source aspect ratio))",
        },
    ),
    "qwen-image-edit-plus": Preset(
        pretrained="Qwen/Qwen-Image-Edit-2509",
        pipeline="QwenImageEditPlusPipeline",
        call_kwargs={"num_inference_steps": 40, "true_cfg_scale": 4.0, "guidance_scale": 1.0, "negative_prompt": " "},
        output_size=f"{QWEN_OUTPUT_SIZE}, for the source image wherever it sits among the input images",
        sources={
            "all settings": "Qwen/Qwen-Image-Edit-2509 model card (40 steps, true_cfg_scale 4.0, guidance_scale 1.0, "
            "negative prompt ' ')",
            "height/width": "our choice: QwenImageEditPlusPipeline's own sizing rule applied to the source image (the "
            "pipeline alone follows the last input image)",
            "prompt": "our choice: the i-th <imagehere> becomes 'Picture i', the label the pipeline puts in front of "
            "input image i ('Picture i: <image>')",
        },
    ),
}


# ---------------------------------------------------------------------------------------------------------------------
# Families: how a sample becomes a pipeline call
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreparedInput:
    """One output image's pipeline inputs, decoded from a sample.

    Attributes:
        prompt: The text the pipeline receives (already in the family's format).
        images: The images the pipeline receives, in the family's order.
        source: The sample's source image as given, or ``None`` (its presence selects the preset's editing
            settings; some families size the output after it).
        group_key: Requests with equal keys may share one pipeline call; ``None`` runs the request alone.
        subject_category: The subject's class noun, for families that take it as a separate input.
    """

    prompt: str
    images: tuple[Image.Image, ...]
    source: Image.Image | None
    group_key: Hashable | None
    subject_category: str | None = None


class PipelineFamily(ABC):
    """Maps samples onto one diffusers pipeline class's call."""

    pipeline_class: ClassVar[str]
    task_kinds: ClassVar[tuple[SampleKind, ...]]
    input_arguments: ClassVar[tuple[str, ...]]
    """Call arguments the family fills from the sample; users cannot override them."""

    def __init__(self, resolution: int | None) -> None:
        self.resolution = resolution

    def check(self, sample: Sample) -> None:
        """Raises when the sample's kind or inputs are outside what this family can take."""
        if sample.kind not in self.task_kinds:
            raise MigeBenchError(
                f"{self.pipeline_class} cannot run sample {sample.id} of kind {sample.kind!r}: it supports "
                f"{', '.join(self.task_kinds)}; pick a task of those kinds or another model."
            )

    @classmethod
    def load(cls, pipeline_class: Any, source: str, dtype: torch.dtype) -> Any:
        """Loads the pipeline from a local folder or a hub id already in the Hugging Face cache (never downloads:
        runs use the weights someone fetched on purpose); missing weights raise ``OSError`` subclasses."""
        return pipeline_class.from_pretrained(source, dtype=dtype, local_files_only=True)

    @abstractmethod
    def prepare(self, sample: Sample) -> PreparedInput:
        """Decodes one sample into this family's inputs."""

    @abstractmethod
    def call(
        self, pipe: Any, batch: Sequence[PreparedInput], generators: list[torch.Generator], kwargs: dict[str, Any]
    ) -> list[Image.Image]:
        """Runs the pipeline once for ``batch`` (all with the same ``group_key``) and returns one image per input."""

    def _source(self, sample: Sample) -> Image.Image:
        if sample.inputs.source_image is None:
            raise MigeBenchError(
                f"{self.pipeline_class} edits a source image and sample {sample.id} has none; run it on editing tasks."
            )
        return sample.inputs.source_image.open()


class InstructPix2PixFamily(PipelineFamily):
    """Source image + instruction. With ``batch_calls=1``, requests whose fitted sources share a size share a call."""

    pipeline_class = "StableDiffusionInstructPix2PixPipeline"
    task_kinds = ("edit",)
    input_arguments = ("prompt", "image", "generator", "num_images_per_prompt")

    def prepare(self, sample: Sample) -> PreparedInput:
        source = self._source(sample)
        fitted = fit_to_resolution(source, self.resolution) if self.resolution is not None else source
        return PreparedInput(sample.inputs.prompt, (fitted,), source, group_key=fitted.size)

    def call(
        self, pipe: Any, batch: Sequence[PreparedInput], generators: list[torch.Generator], kwargs: dict[str, Any]
    ) -> list[Image.Image]:
        prompts = [request.prompt for request in batch]
        images = [request.images[0] for request in batch]
        return pipe(prompt=prompts, image=images, generator=generators, **kwargs).images


OMNIGEN_IMAGE_TAG = "<img><|image_{index}|></img>"


class OmniGenFamily(PipelineFamily):
    """OmniGen's multimodal prompt: each image appears in the text as ``<img><|image_i|></img>`` (1-based).

    The sample's multimodal prompt is used when it has one (its placeholders, in order, become image tags); an
    editing sample without one gets the source image tag in front of the instruction, as in OmniGen's editing
    examples. A sample with a source image is generated at the source's size as OmniGen processes it.
    """

    pipeline_class = "OmniGenPipeline"
    task_kinds = ("subject", "edit", "subject_edit")
    input_arguments = ("prompt", "input_images", "generator", "num_images_per_prompt", "use_input_image_size_as_output")

    def prepare(self, sample: Sample) -> PreparedInput:
        inputs = sample.inputs
        if inputs.multimodal_prompt is not None:
            prompt = omnigen_prompt(inputs.multimodal_prompt)
            images = tuple(reference.open() for reference in inputs.placeholder_images)
        elif inputs.source_image is not None:
            prompt = f"{OMNIGEN_IMAGE_TAG.format(index=1)} {inputs.prompt}"
            images = (inputs.source_image.open(),)
        elif inputs.subject_images:
            raise MigeBenchError(
                f"OmniGen needs a multimodal prompt to place the subject images of sample {sample.id}, and the task "
                "gives none; use a task that defines one (e.g. dreambench_mige)."
            )
        else:
            prompt, images = inputs.prompt, ()
        source = inputs.source_image.open() if inputs.source_image is not None else None
        # Never batched: different prompts would be padded to one length, which changes what attention sees.
        return PreparedInput(prompt, images, source, group_key=None)

    def call(
        self, pipe: Any, batch: Sequence[PreparedInput], generators: list[torch.Generator], kwargs: dict[str, Any]
    ) -> list[Image.Image]:
        (request,) = batch
        if request.source is not None:
            # Output at the size OmniGen gives the source inside the model, wherever the source sits in the prompt
            # (the pipeline's own use_input_image_size_as_output takes the first image, an entity in MIGEBench add).
            from diffusers.pipelines.omnigen.processor_omnigen import crop_image

            width, height = crop_image(request.source, kwargs.get("max_input_image_size", 1024)).size
            kwargs = {**kwargs, "width": width, "height": height}
        return pipe(
            prompt=[request.prompt],
            input_images=[list(request.images)] if request.images else None,
            generator=generators,
            **kwargs,
        ).images


def omnigen_prompt(multimodal_prompt: str) -> str:
    """Replaces each :data:`IMAGE_PLACEHOLDER` (case-insensitive), in order, with OmniGen's tag for image 1, 2, ..."""
    return _number_placeholders(multimodal_prompt, OMNIGEN_IMAGE_TAG)


def _number_placeholders(multimodal_prompt: str, template: str) -> str:
    """Replaces the i-th :data:`IMAGE_PLACEHOLDER` (case-insensitive) with ``template.format(index=i)``, 1-based."""
    counter = itertools.count(1)
    pattern = re.compile(re.escape(IMAGE_PLACEHOLDER), re.IGNORECASE)
    return pattern.sub(lambda _: template.format(index=next(counter)), multimodal_prompt)


class FluxKontextFamily(PipelineFamily):
    """Source image + instruction, generated at the source's Kontext resolution.

    diffusers generates 1024x1024 unless told otherwise (then re-fits the requested size to ``max_area``, which moves
    four of the seventeen Kontext resolutions by 16 px); Black Forest Labs' reference sampling instead generates at
    the resolution the source is resized to. The family reproduces the reference: it passes that size as
    ``height``/``width`` and its area as ``max_area``. With ``batch_calls=1``, sources of one size share a call.
    """

    pipeline_class = "FluxKontextPipeline"
    task_kinds = ("edit",)
    input_arguments = (
        "image",
        "prompt",
        "prompt_2",
        "generator",
        "num_images_per_prompt",
        "height",
        "width",
        "max_area",
    )

    def prepare(self, sample: Sample) -> PreparedInput:
        source = self._source(sample)
        return PreparedInput(sample.inputs.prompt, (source,), source, group_key=source.size)

    def call(
        self, pipe: Any, batch: Sequence[PreparedInput], generators: list[torch.Generator], kwargs: dict[str, Any]
    ) -> list[Image.Image]:
        # The pipeline sizes every image of a call after the first one, hence one source size per call.
        auto_resize = bool(kwargs.get("_auto_resize", True))
        width, height = kontext_size(batch[0].source.size, auto_resize, multiple_of=pipe.vae_scale_factor * 2)
        return pipe(
            image=[request.images[0] for request in batch],
            prompt=[request.prompt for request in batch],
            generator=generators,
            width=width,
            height=height,
            max_area=width * height,
            **kwargs,
        ).images


def kontext_size(source_size: tuple[int, int], auto_resize: bool = True, multiple_of: int = 16) -> tuple[int, int]:
    """``(width, height)`` FluxKontextPipeline resizes a source of ``source_size`` to before encoding it.

    With ``auto_resize`` (the pipeline's ``_auto_resize``, on by default) that is the Kontext training resolution
    whose aspect ratio is closest to the source's (sides first floored to multiples of ``multiple_of``, as the
    pipeline does); without it, the source size itself. Either way both sides are floored to multiples of
    ``multiple_of``: 16 for FLUX, which packs 2x2 patches of an 8x-downsampled latent.
    """
    from diffusers.pipelines.flux.pipeline_flux_kontext import PREFERRED_KONTEXT_RESOLUTIONS

    width, height = (side // multiple_of * multiple_of for side in source_size)
    if auto_resize:
        aspect_ratio = width / height
        _, width, height = min(
            (abs(aspect_ratio - kontext_width / kontext_height), kontext_width, kontext_height)
            for kontext_width, kontext_height in PREFERRED_KONTEXT_RESOLUTIONS
        )
    return width // multiple_of * multiple_of, height // multiple_of * multiple_of


QWEN_OUTPUT_AREA = 1024 * 1024
"""Pixel area the Qwen-Image-Edit pipelines generate at by default (``calculate_dimensions(1024 * 1024, ...)``)."""

QWEN_PICTURE_NAME = "Picture {index}"
"""How Qwen-Image-Edit-Plus names input image ``index`` (1-based) in front of the prompt (``Picture 1: <image>``)."""


class QwenImageEditFamily(PipelineFamily):
    """Source image + instruction (Qwen-Image-Edit), at the pipeline's default size.

    The pipeline resizes the source to about a megapixel at its aspect ratio (:data:`QWEN_OUTPUT_AREA`, sides
    multiples of 32) for both the VAE and the Qwen2.5-VL text encoder, and generates at that size. With
    ``batch_calls=1``, sources of one size share a call (the pipeline sizes every image of a call after the first).
    """

    pipeline_class = "QwenImageEditPipeline"
    task_kinds = ("edit",)
    input_arguments = ("image", "prompt", "generator", "num_images_per_prompt")

    def prepare(self, sample: Sample) -> PreparedInput:
        source = self._source(sample)
        return PreparedInput(sample.inputs.prompt, (source,), source, group_key=source.size)

    def call(
        self, pipe: Any, batch: Sequence[PreparedInput], generators: list[torch.Generator], kwargs: dict[str, Any]
    ) -> list[Image.Image]:
        negative_prompt = kwargs.get("negative_prompt")
        if isinstance(negative_prompt, str):
            # The negative prompt is encoded with the images of the call: one per image, or the processor refuses.
            kwargs = {**kwargs, "negative_prompt": [negative_prompt] * len(batch)}
        return pipe(
            image=[request.images[0] for request in batch],
            prompt=[request.prompt for request in batch],
            generator=generators,
            **kwargs,
        ).images


class QwenImageEditPlusFamily(PipelineFamily):
    """Several input images + instruction (Qwen-Image-Edit-2509), output sized after the source image.

    The pipeline writes ``Picture 1: <image 1>Picture 2: <image 2>...`` in front of the prompt. Our choice: a
    sample's multimodal prompt passes its placeholder images in order, each ``<imagehere>`` becoming ``Picture i``
    (``put <imagehere> into <imagehere>`` -> ``put Picture 1 into Picture 2``); an editing sample without one
    passes its source image and plain instruction. The pipeline would size the output after the *last* image; the
    family applies that same rule (about a megapixel at the aspect ratio, sides multiples of 32) to the source image,
    wherever it sits among the inputs. One image per call: the pipeline supports no batches.
    """

    pipeline_class = "QwenImageEditPlusPipeline"
    task_kinds = ("edit", "subject_edit")
    input_arguments = ("image", "prompt", "generator", "num_images_per_prompt", "height", "width")

    def prepare(self, sample: Sample) -> PreparedInput:
        inputs = sample.inputs
        if inputs.multimodal_prompt is not None:
            prompt = qwen_plus_prompt(inputs.multimodal_prompt)
            images = tuple(reference.open() for reference in inputs.placeholder_images)
        elif inputs.subject_images:
            raise MigeBenchError(
                f"Qwen-Image-Edit-Plus needs a multimodal prompt to say which picture is which in sample {sample.id}, "
                "and the task gives none; use a task that defines one (e.g. migebench)."
            )
        else:
            prompt, images = inputs.prompt, (self._source(sample),)
        source = inputs.source_image.open() if inputs.source_image is not None else None
        return PreparedInput(prompt, images, source, group_key=None)

    def call(
        self, pipe: Any, batch: Sequence[PreparedInput], generators: list[torch.Generator], kwargs: dict[str, Any]
    ) -> list[Image.Image]:
        from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus

        (request,) = batch
        if request.source is not None:
            width, height = pipeline_qwenimage_edit_plus.calculate_dimensions(
                QWEN_OUTPUT_AREA, request.source.width / request.source.height
            )
            kwargs = {**kwargs, "width": width, "height": height}
        return pipe(image=list(request.images), prompt=request.prompt, generator=generators, **kwargs).images


def qwen_plus_prompt(multimodal_prompt: str) -> str:
    """Replaces each :data:`IMAGE_PLACEHOLDER` (case-insensitive), in order, with ``Picture 1``, ``Picture 2``, ..."""
    return _number_placeholders(multimodal_prompt, QWEN_PICTURE_NAME)


class BlipDiffusionFamily(PipelineFamily):
    """Subject image + subject category + the text around the subject, in BLIP-Diffusion's own prompt format.

    The pipeline writes its prompt itself as ``"a <target category> <text>"`` (repeated 20 times) and embeds the
    reference image in place of the category's context, so it wants the text *without* the subject: the sample's
    plain prompt loses a leading ``"a <subject category>"`` (``"a dog in the jungle"`` -> ``"in the jungle"``). A
    prompt that does not start that way (DreamBench's ``"a red dog"``, a ``"a sks dog ..."`` DreamBooth prompt) is
    passed whole, so nothing the prompt asks for is dropped: ``"a dog a red dog"``. Reference image: the first subject
    image; source and target categories: the sample's ``subject_category``. Outputs have the fixed call size, so with
    ``batch_calls=1`` any requests share a call. Loaded through :mod:`mige_bench.models.blip_diffusion_compat`, which
    makes the deprecated pipeline run with transformers 5.
    """

    pipeline_class = "BlipDiffusionPipeline"
    task_kinds = ("subject",)
    input_arguments = ("prompt", "reference_image", "source_subject_category", "target_subject_category", "generator")

    @classmethod
    def load(cls, pipeline_class: Any, source: str, dtype: torch.dtype) -> Any:
        """Builds the pipeline component by component from its folder (for a hub id: its Hugging Face cache copy)."""
        from huggingface_hub import snapshot_download

        from mige_bench.models.blip_diffusion_compat import load_blip_diffusion

        folder = Path(source) if Path(source).exists() else Path(snapshot_download(source, local_files_only=True))
        return load_blip_diffusion(folder, dtype)

    def check(self, sample: Sample) -> None:
        super().check(sample)
        if sample.inputs.subject_category is None or not sample.inputs.subject_images:
            raise MigeBenchError(
                f"BLIP-Diffusion needs a subject image and the subject's category (class noun) and sample {sample.id} "
                "lacks one; use a task whose loader sets subject_category (DreamBench)."
            )

    def prepare(self, sample: Sample) -> PreparedInput:
        inputs = sample.inputs
        category = str(inputs.subject_category)
        text = blip_diffusion_text(inputs.prompt, category)
        # Every reference is resized to the Q-Former's input and every output has the call's size: one shared key.
        return PreparedInput(
            text, (inputs.subject_images[0].open(),), None, group_key=self.pipeline_class, subject_category=category
        )

    def call(
        self, pipe: Any, batch: Sequence[PreparedInput], generators: list[torch.Generator], kwargs: dict[str, Any]
    ) -> list[Image.Image]:
        categories = [str(request.subject_category) for request in batch]
        return pipe(
            prompt=[request.prompt for request in batch],
            reference_image=[request.images[0] for request in batch],
            source_subject_category=categories,
            target_subject_category=categories,
            generator=generators,
            **kwargs,
        ).images


def blip_diffusion_text(prompt: str, subject_category: str) -> str:
    """The prompt without a leading ``"a/an <subject_category>"`` (case-insensitive), or whole when it has none."""
    pattern = re.compile(rf"^\s*an?\s+{re.escape(subject_category.strip())}\b\s*", re.IGNORECASE)
    stripped, count = pattern.subn("", prompt, count=1)
    return stripped.strip() if count else prompt.strip()


FAMILIES: dict[str, type[PipelineFamily]] = {
    family.pipeline_class: family
    for family in (
        InstructPix2PixFamily,
        OmniGenFamily,
        FluxKontextFamily,
        QwenImageEditFamily,
        QwenImageEditPlusFamily,
        BlipDiffusionFamily,
    )
}


def fit_to_resolution(image: Image.Image, resolution: int) -> Image.Image:
    """InstructPix2Pix's input sizing (its ``edit_cli.py``): about ``resolution`` on the long side, multiples of 64.

    The scale that brings the long side to ``resolution`` is raised until the short side lands on a multiple of 64;
    both scaled sides are then floored to multiples of 64 (so the long side may exceed ``resolution``: 500x333 ->
    576x384) and the image is scaled and centre-cropped to that size with Lanczos (PIL ``ImageOps.fit``).
    """
    width, height = image.size
    factor = resolution / max(width, height)
    factor = math.ceil(min(width, height) * factor / 64) * 64 / min(width, height)
    target = (int(width * factor // 64) * 64, int(height * factor // 64) * 64)
    if target == image.size:
        return image
    return ImageOps.fit(image, target, method=Image.Resampling.LANCZOS)


# ---------------------------------------------------------------------------------------------------------------------
# The generator
# ---------------------------------------------------------------------------------------------------------------------


class DiffusersGenerator(Generator):
    """Runs a diffusers pipeline of a supported family; see the module docstring.

    Args:
        preset: Name of a :data:`PRESETS` entry; its settings are the defaults of every other argument.
        pretrained: Hub id or local folder of the diffusers-format pipeline (overrides the preset's).
        pipeline: diffusers pipeline class name (default: the preset's, else read from ``model_index.json``).
        dtype: ``bf16``, ``fp16`` or ``fp32`` (default: the preset's on GPU, fp32 on CPU).
        device: Torch device, passed by the runner.
        cpu_offload: ``1`` to keep weights on CPU and move each component to the device only while it runs.
        scheduler: diffusers scheduler class to swap in (default: the preset's, else the checkpoint's).
        resolution: Long side InstructPix2Pix-family inputs are fitted to (default: the preset's; none: as given).
        batch_calls: ``1`` to pass compatible requests of a batch to one pipeline call (see the module docstring).
        **call_overrides: Keyword arguments of the pipeline call, as strings (numbers are parsed).
    """

    name = "diffusers"

    def __init__(
        self,
        preset: str | None = None,
        pretrained: str | None = None,
        pipeline: str | None = None,
        dtype: str | None = None,
        device: str = "cpu",
        cpu_offload: str = "0",
        scheduler: str | None = None,
        resolution: str | None = None,
        batch_calls: str = "0",
        **call_overrides: str,
    ) -> None:
        self.preset_name = preset
        base = _lookup_preset(preset)
        self.pretrained = pretrained or (base.pretrained if base else None)
        if self.pretrained is None:
            raise MigeBenchError(
                "The diffusers model needs preset=<name> or pretrained=<hub id or folder>; presets: "
                f"{', '.join(PRESETS)}."
            )
        self.device = device
        self.cpu_offload = _parse_flag("cpu_offload", cpu_offload)
        self.batch_calls = _parse_flag("batch_calls", batch_calls)
        self.dtype_name = dtype or (base.dtype if base and torch.device(device).type != "cpu" else "fp32")
        if self.dtype_name not in DTYPES:
            raise MigeBenchError(f"dtype={self.dtype_name!r} is not one of {', '.join(DTYPES)}.")
        self.scheduler_name = scheduler or (base.scheduler if base else None)
        self.resolution = int(resolution) if resolution else (base.resolution if base else None)
        self.gated = bool(base and base.gated and pretrained is None)
        self._preset = base
        self.pipe = self._load(pipeline or (base.pipeline if base else None))
        self.family = FAMILIES[type(self.pipe).__name__](self.resolution)
        self.call_kwargs = {**(base.call_kwargs if base else {}), **self._parse_overrides(call_overrides)}
        self.source_call_kwargs = {
            key: value for key, value in (base.source_call_kwargs if base else {}).items() if key not in call_overrides
        }

    @property
    def task_kinds(self) -> tuple[SampleKind, ...]:
        return self.family.task_kinds

    @property
    def settings(self) -> dict[str, Any]:
        preset = self._preset
        return {
            "preset": self.preset_name,
            "pretrained": self.pretrained,
            "pipeline": type(self.pipe).__name__,
            "scheduler": type(self.pipe.scheduler).__name__,
            "dtype": self.dtype_name,
            "cpu_offload": self.cpu_offload,
            "batch_calls": self.batch_calls,
            "resolution": self.resolution,
            "call_kwargs": self.call_kwargs,
            "source_call_kwargs": self.source_call_kwargs,
            "output_size": preset.output_size if preset else "the pipeline's default for its inputs",
            "sources": dict(preset.sources) if preset else {},
            "task_kinds": list(self.family.task_kinds),
            "seeding": "one CPU torch.Generator per output image, seeded with the runner's per-image seed",
        }

    def generate(self, samples: Sequence[Sample], seeds: Sequence[int]) -> list[Image.Image]:
        for sample in samples:
            self.family.check(sample)
        prepared = [self.family.prepare(sample) for sample in samples]
        images: list[Image.Image] = []
        keys = [request.group_key if self.batch_calls else None for request in prepared]
        for start, stop in _runs_of_equal_keys(keys):
            batch = prepared[start:stop]
            generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds[start:stop]]
            kwargs = {**self.call_kwargs, **(self.source_call_kwargs if batch[0].source is not None else {})}
            # Some pipelines also draw from the global RNG (OmniGen samples its input images' latents from the VAE
            # posterior without a generator): seed it per call too, and restore it afterwards.
            with torch.random.fork_rng(), torch.inference_mode():
                torch.manual_seed(seeds[start])
                images.extend(image.convert("RGB") for image in self.family.call(self.pipe, batch, generators, kwargs))
        return images

    # -- loading --------------------------------------------------------------------------------------------------

    def _load(self, pipeline_name: str | None) -> Any:
        import diffusers

        load, pipeline_class = PipelineFamily.load, diffusers.DiffusionPipeline
        # A local folder names its pipeline: use the family's loader (BLIP-Diffusion cannot go through diffusers').
        pipeline_name = pipeline_name or self._declared_pipeline()
        if pipeline_name is not None:
            if pipeline_name not in FAMILIES:
                raise MigeBenchError(
                    f"pipeline={pipeline_name!r} is not supported by the diffusers model; supported: "
                    f"{', '.join(FAMILIES)}."
                )
            load, pipeline_class = FAMILIES[pipeline_name].load, getattr(diffusers, pipeline_name)
        pipe = self._from_pretrained(load, pipeline_class)
        if type(pipe).__name__ not in FAMILIES:
            raise MigeBenchError(
                f"{self.pretrained} holds a {type(pipe).__name__}, which the diffusers model does not support; "
                f"supported: {', '.join(FAMILIES)}."
            )
        if self.scheduler_name is not None:
            scheduler_class = getattr(diffusers, self.scheduler_name, None)
            if scheduler_class is None:
                raise MigeBenchError(f"scheduler={self.scheduler_name!r} is not a diffusers scheduler class.")
            pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config)
        if self.cpu_offload:
            pipe.enable_model_cpu_offload(device=self.device)
        else:
            pipe.to(self.device)
        pipe.set_progress_bar_config(desc=type(pipe).__name__, leave=False)
        return pipe

    def _declared_pipeline(self) -> str | None:
        """The supported pipeline a local folder's ``model_index.json`` names, else ``None`` (diffusers decides)."""
        index = Path(self.pretrained).expanduser() / "model_index.json"
        if not index.is_file():
            return None
        declared = json.loads(index.read_text(encoding="utf-8")).get("_class_name")
        return declared if declared in FAMILIES else None

    def _from_pretrained(self, load: Callable[[Any, str, torch.dtype], Any], pipeline_class: Any) -> Any:
        """Loads ``pretrained`` as a local folder when that folder exists or the value cannot be a hub id (see
        :func:`_is_hub_id`), else as a hub id from the Hugging Face cache; what is missing becomes a one-line error."""
        from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError

        local = Path(self.pretrained).expanduser()
        if local.exists() and not (local / "model_index.json").is_file():
            raise MigeBenchError(
                f"{local} is not a diffusers pipeline folder (no model_index.json); download one with "
                f"`{self._download_command(local)}`."
            )
        if not local.exists() and not _is_hub_id(self.pretrained):
            raise MigeBenchError(
                f"Cannot load diffusers weights from {local}: the folder does not exist. Download the pipeline into "
                f"it with `{self._download_command(local)}`{self._preset_gated_hint()}."
            )
        try:
            return load(pipeline_class, str(local) if local.exists() else self.pretrained, DTYPES[self.dtype_name])
        except GatedRepoError as error:
            raise MigeBenchError(f"{self._missing_weights_message(gated=True)}.") from error
        except OSError as error:  # missing files, and hub ids not in the cache (LocalEntryNotFoundError)
            if local.exists():
                raise MigeBenchError(
                    f"{local} is an incomplete diffusers pipeline folder ({error}); complete it with "
                    f"`{self._download_command(local)}`."
                ) from error
            if self._preset is not None and self.pretrained == self._preset.pretrained:
                message = self._missing_weights_message(gated=self.gated)
            else:
                message = self._folder_or_hub_id_message()
            # Not being in the cache is what the message says already; the library's text would only add advice that
            # does not apply here (pass local_files_only=False).
            detail = "" if isinstance(error, LocalEntryNotFoundError) else f" ({error})"
            raise MigeBenchError(f"{message}{detail}.") from error

    def _download_command(self, folder: Path) -> str:
        """``hf download`` of the preset's weights (or a placeholder without a preset) into ``folder``."""
        return f"hf download {self._preset.pretrained if self._preset else '<hub id>'} --local-dir {folder}"

    def _preset_gated_hint(self) -> str:
        return _gated_hint(self._preset.pretrained) if self._preset and self._preset.gated else ""

    def _folder_or_hub_id_message(self) -> str:
        """``pretrained`` is neither an existing folder nor a cached hub repository, and could mean either."""
        value = self.pretrained
        return (
            f"Cannot load diffusers weights {value!r}: not downloaded (runs never download weights); there is no "
            f"folder {value} and no hub repository {value} in the Hugging Face cache. Download the pipeline into that "
            f"folder with `{self._download_command(Path(value))}`{self._preset_gated_hint()}, or, if {value} is a hub "
            f"id, fetch it into the cache with `hf download {value}`"
        )

    def _missing_weights_message(self, gated: bool) -> str:
        """The hub id in ``pretrained`` is not in the cache: how to fetch it (without the final full stop)."""
        hub_id = self.pretrained
        message = (
            f"Cannot load diffusers weights {hub_id!r}: not downloaded (runs never download weights). Fetch them with "
            f"`hf download {hub_id} --local-dir models/{Path(hub_id).name}` and pass "
            f"pretrained=models/{Path(hub_id).name}, a folder with model_index.json and one subfolder per component"
        )
        return message + (_gated_hint(hub_id) if gated else "")

    def _parse_overrides(self, overrides: Mapping[str, str]) -> dict[str, Any]:
        accepted = set(inspect.signature(type(self.pipe).__call__).parameters) - {"self", "kwargs"}
        settable = accepted - set(self.family.input_arguments) - {"output_type", "return_dict", "latents"}
        unknown = sorted(set(overrides) - settable)
        if unknown:
            raise MigeBenchError(
                f"{type(self.pipe).__name__} has no settable call argument(s) {', '.join(unknown)}; settable: "
                f"{', '.join(sorted(settable))}."
            )
        return {key: _parse_value(value) for key, value in overrides.items()}


def _lookup_preset(name: str | None) -> Preset | None:
    if name is None:
        return None
    if name not in PRESETS:
        raise MigeBenchError(f"Unknown diffusers preset {name!r}; presets: {', '.join(PRESETS)}.")
    return PRESETS[name]


def _is_hub_id(value: str) -> bool:
    """Whether ``pretrained`` can be a hub id: ``owner/name`` with exactly one slash, in the characters the hub allows.

    Paths (absolute, ``./x``, ``~/x``, ``a/b/c``, a bare folder name) are not; ``models/ip2p`` is both a relative
    folder and a hub id, so a missing one is reported with both readings. Bare legacy hub names (``gpt2``) count as
    folders: every diffusers pipeline on the hub lives under an owner.
    """
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if value.count("/") != 1:
        return False
    try:
        validate_repo_id(value)
    except HFValidationError:
        return False
    return True


def _gated_hint(hub_id: str) -> str:
    return (
        f"; the repository is gated: accept its licence at https://huggingface.co/{hub_id} and run `hf auth login` "
        "(or set HF_TOKEN) first"
    )


def _parse_flag(name: str, value: str) -> bool:
    if str(value).lower() in ("1", "true", "yes"):
        return True
    if str(value).lower() in ("0", "false", "no"):
        return False
    raise MigeBenchError(f"{name}={value!r} must be 1 or 0.")


def _parse_value(text: str) -> Any:
    """``--model-args`` values arrive as strings: integers and floats become numbers, everything else stays text."""
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            continue
    return text


def _runs_of_equal_keys(keys: Sequence[Hashable]) -> list[tuple[int, int]]:
    """``[start, stop)`` ranges of consecutive equal keys (``None`` equals nothing): requests sharing one call.

    Only consecutive requests are joined, so outputs keep the runner's order without any reordering.
    """
    runs: list[tuple[int, int]] = []
    start = 0
    for index in range(1, len(keys) + 1):
        if index == len(keys) or keys[start] is None or keys[index] != keys[start]:
            runs.append((start, index))
            start = index
    return runs
