"""``MIGEPipeline``: multimodal instruction → image, for MIGE's three tasks, in the diffusers idiom.

Reproduces the three inference scripts of ``Eureka-Maggie/MIGE`` @ ``9808b79`` (contract: ``MIGE_SPEC.md`` §3,
§1.10-§1.11, §6.5-§6.7) on top of the verified parts in this package::

    prompt ─ format + tokenize per <imagehere> segment ──────────────────────┐
    references ─ BLIP eval transform (ViT) ──────────────────────────────────┤
               └ VAE transform ─ posterior sample ─ DiT x_embedder tokens ───┴─ multimodal encoder (once) ─┐
    source ─ VAE transform ─ posterior sample × 0.18215 ─────────────────────────────────────────────────────┤
    noise ───────────────────────────────────────────── DPM-Solver++(2M) + MIGE CFG over the DiT ───────────┴─ VAE

Differences from the scripts, all output-preserving or opt-out:

* The multimodal conditioning (EVA ViT, Q-Former, FFM, T5) is computed once per generated image, not at every
  denoising step, and only for the reference slots a marker reads (``skip_unused_references``).
* Conditioning, posterior sampling and decoding run one image at a time, so an image never depends on its batch.
* Randomness is per image by default: each image's ``torch.Generator`` draws its references' posterior noise, then
  its source's, then its initial noise (all on CPU, so also device-independent). ``noise="original"`` draws as the
  scripts do instead: posterior noise from one CPU stream in item order and one initial-noise tensor per batch from
  the device RNG (spec §3.1.3), which is what makes the original's outputs depend on batch size and position. Pass
  :meth:`OriginalScriptsRNG.seeded(device=...) <reference_model.original_rng.OriginalScriptsRNG.seeded>` to start
  both streams exactly where the scripts' are.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import PIL.Image
import torch
import torchvision.transforms.functional as TF
from diffusers import AutoencoderKL, DiffusionPipeline
from diffusers.utils import BaseOutput
from transformers import PreTrainedTokenizerFast

from reference_model.multimodal_encoder import MIGEMultimodalEncoder, MultimodalConditioning
from reference_model.original_rng import OriginalScriptsRNG
from reference_model.scheduling_mige import TASK_SAMPLING_DEFAULTS, SamplingSettings, sample_mige_latents
from reference_model.text_processing import PromptKind, SegmentTokenizer, format_prompt
from reference_model.transformer_mige import MIGETransformer2DModel

logger = logging.getLogger(__name__)

# The scripts hard-code SD's latent scale instead of reading vae.config.scaling_factor (spec §6.5).
VAE_LATENT_SCALE = 0.18215
# LAVIS BlipImageEvalProcessor normalisation (the CLIP statistics), spec §3.1.1.
BLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
BLIP_STD = (0.26862954, 0.26130258, 0.27577711)

NoiseMode = Literal["per_image", "original"]
OutputType = Literal["pil", "np", "latent"]


@dataclass
class MIGEPipelineOutput(BaseOutput):
    """Output of :class:`MIGEPipeline`.

    Attributes:
        images: ``B`` PIL images, a uint8 array ``[B, H, W, 3]`` (the pixels the scripts JPEG-encode) or, for
            ``output_type="latent"``, the final latents ``[B, 4, h, w]`` before ``/ 0.18215``.
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor


# --------------------------------------------------------------------------------------------------------------------
#                                       Image preprocessing (spec §3.1.1-§3.1.2)
# --------------------------------------------------------------------------------------------------------------------


def blip_eval_pixels(image: PIL.Image.Image, size: int) -> torch.Tensor:
    """ViT input: squash to ``size²`` (bicubic, aspect not kept), ToTensor, BLIP normalisation → ``[3, size, size]``."""
    resized = image.convert("RGB").resize((size, size), PIL.Image.Resampling.BICUBIC)
    return TF.normalize(TF.to_tensor(resized), BLIP_MEAN, BLIP_STD)


def letterbox(image: PIL.Image.Image, size: int) -> PIL.Image.Image:
    """Subject-script VAE transform: bicubic resize of the long side to ``size`` (short side truncated), black bars."""
    width, height = image.size
    if width > height:
        new_width, new_height = size, int(size * height / width)
    else:
        new_width, new_height = int(size * width / height), size
    resized = image.convert("RGB").resize((new_width, new_height), PIL.Image.Resampling.BICUBIC)
    canvas = PIL.Image.new("RGB", (size, size), (0, 0, 0))
    canvas.paste(resized, ((size - new_width) // 2, (size - new_height) // 2))
    return canvas


def resize_center_crop(image: PIL.Image.Image, size: int) -> PIL.Image.Image:
    """Edit/MIGEBench VAE transform: ``T.Resize(size)`` (bilinear, short side) then ``T.CenterCrop(size)``."""
    resized = TF.resize(image.convert("RGB"), size, interpolation=TF.InterpolationMode.BILINEAR)
    return TF.center_crop(resized, size)


def vae_pixels(image: PIL.Image.Image, size: int, use_letterbox: bool) -> torch.Tensor:
    """VAE input in ``[-1, 1]``: the task's transform, ToTensor, ``Normalize(0.5, 0.5)`` → ``[3, size, size]``."""
    fitted = letterbox(image, size) if use_letterbox else resize_center_crop(image, size)
    return TF.normalize(TF.to_tensor(fitted), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def to_uint8_images(decoded: torch.Tensor) -> np.ndarray:
    """``torchvision.utils.save_image(normalize=True, value_range=(-1, 1))`` up to the PIL call: ``[B, 3, H, W]`` →
    uint8 ``[B, H, W, 3]`` (clamp, ``(x + 1) / 2``, ``x * 255 + 0.5``, truncate)."""
    images = (decoded.float().clamp(-1, 1) + 1) / 2
    return images.mul(255).add_(0.5).clamp_(0, 255).permute(0, 2, 3, 1).to("cpu", torch.uint8).numpy()


# --------------------------------------------------------------------------------------------------------------------
#                                                    The pipeline
# --------------------------------------------------------------------------------------------------------------------


class MIGEPipeline(DiffusionPipeline):
    """MIGE: subject-driven generation, instruction editing and subject-driven editing from one multimodal prompt.

    Precision (spec §1.11): load ``transformer`` and ``multimodal_encoder`` in bf16 on a GPU (the encoder then runs
    its ViT under fp16 autocast like the original) and keep ``vae`` in fp32; fp32 everywhere on CPU.

    Args:
        transformer: The DiT; also embeds the reference latents for the encoder's fusion module.
        multimodal_encoder: EVA ViT + Q-Former + FFM + ``t5_proj`` + T5 encoder.
        vae: ``sd-vae-ft-ema`` (always used at its own dtype; fp32 reproduces the scripts).
        tokenizer: The T5 fast tokenizer; its ``tokenizers`` pipeline must be the transformers-4.33 one
            (:class:`~reference_model.text_processing.SegmentTokenizer` builds it; the converter saves it).
    """

    def __init__(
        self,
        transformer: MIGETransformer2DModel,
        multimodal_encoder: MIGEMultimodalEncoder,
        vae: AutoencoderKL,
        tokenizer: PreTrainedTokenizerFast,
    ) -> None:
        super().__init__()
        self.register_modules(
            transformer=transformer, multimodal_encoder=multimodal_encoder, vae=vae, tokenizer=tokenizer
        )
        self.segment_tokenizer = SegmentTokenizer(tokenizer.backend_tokenizer)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self._encoder_offload = False

    # ------------------------------------------------------------------ memory options

    def enable_encoder_offload(self) -> None:
        """Keep the multimodal encoder (≈6 B parameters, mostly T5-XXL) on CPU except while it encodes.

        The transformer and VAE stay where they are (``pipe.to("cuda")`` first): only the sampling loop's weights
        occupy the GPU while denoising. Costs one host→device copy of the encoder per call (see
        :func:`temporarily_on`).
        """
        self._encoder_offload = True
        self.multimodal_encoder.to("cpu")

    def enable_vae_tiling(self) -> None:
        """Decode/encode in overlapping tiles (only matters above the VAE's tile size, 512 px for sd-vae-ft-ema)."""
        self.vae.enable_tiling()

    @property
    def image_size(self) -> int:
        """Output side in pixels: the DiT's latent size times the VAE's downsampling (512 for the release)."""
        return self.transformer.config.input_size * self.vae_scale_factor

    # ------------------------------------------------------------------ generation

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | Sequence[str],
        kind: PromptKind = "subject",
        reference_images: Sequence[PIL.Image.Image] | Sequence[Sequence[PIL.Image.Image]] | None = None,
        source_image: PIL.Image.Image | Sequence[PIL.Image.Image] | None = None,
        edit_task: str | Sequence[str] = "local",
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        source_guidance_scale: float | None = None,
        generator: torch.Generator | Sequence[torch.Generator] | OriginalScriptsRNG | None = None,
        noise: NoiseMode = "per_image",
        skip_unused_references: bool = True,
        output_type: OutputType = "pil",
        return_dict: bool = True,
    ) -> MIGEPipelineOutput | tuple:
        """Generate one image per prompt.

        Args:
            prompt: The raw instruction(s): a multimodal prompt with ``<ImageHere>`` markers (subject, subject_edit)
                or an editing instruction (edit). Templates and caption cleaning are applied here.
            kind: ``"subject"``, ``"edit"`` or ``"subject_edit"`` (one kind per call: it fixes the CFG scheme).
            reference_images: Per prompt, the images of its markers in order (at most 4 are used). Not for
                ``"edit"``, whose only reference is the source image.
            source_image: Per prompt, the image to edit (``"edit"``, ``"subject_edit"``).
            edit_task: Emu-Edit task name per prompt (``"global"`` rewrites with ``of<imagehere>``); edit only.
            num_inference_steps: Solver steps (default per kind: 50 subject, 60 editing).
            guidance_scale: Instruction guidance ``s_y`` (default 7 subject, 5 editing).
            source_guidance_scale: Source guidance ``s_s`` for the editing kinds (default 1).
            generator: One CPU generator per prompt (or one for a single prompt); see the module docstring. With
                ``noise="original"``: an :class:`OriginalScriptsRNG` seeded for the pipeline's device (posterior and
                initial-noise streams, advanced by this call so consecutive batches continue them), or ``None``
                for torch's global generators.
            noise: ``"per_image"`` (batch-independent) or ``"original"`` (the scripts' batch-coupled draws).
            skip_unused_references: Encode only the reference slots that a marker reads (output-identical).
            output_type: ``"pil"``, ``"np"`` (uint8 ``[B, H, W, 3]``) or ``"latent"``.
            return_dict: Return a :class:`MIGEPipelineOutput` rather than a 1-tuple.

        Returns:
            The images (see :class:`MIGEPipelineOutput`).
        """
        prompts, references, sources, edit_tasks = self.check_inputs(
            prompt, kind, reference_images, source_image, edit_task
        )
        batch = len(prompts)
        settings = self.sampling_settings(kind, num_inference_steps, guidance_scale, source_guidance_scale)
        generators = self._posterior_generators(generator, batch, noise)
        device = self.transformer.device

        # 1. Format and tokenize the multimodal instructions: B × (markers + 1) token-id segments.
        texts = [format_prompt(kind, text, edit_task=task) for text, task in zip(prompts, edit_tasks, strict=True)]
        segment_ids = self.segment_tokenizer.batch(texts)

        # 2. Preprocess the references: BLIP eval transform for the ViT, the task's transform for the VAE.
        slots = self.multimodal_encoder.config.max_references
        vit_size = self.multimodal_encoder.config.vision_image_size
        reference_pixels = torch.zeros(batch, slots, 3, vit_size, vit_size)  # [B, R, 3, 224, 224], zero-padded
        for b, images in enumerate(references):
            for slot, image in enumerate(images):
                reference_pixels[b, slot] = blip_eval_pixels(image, vit_size)

        # 3. VAE posterior samples: unscaled references [B, R, 4, h, w]; 0.18215-scaled source [B, 4, h, w].
        reference_latents, source_latents = self.encode_images(kind, references, sources, generators, slots)

        # 4. Multimodal conditioning, once per image (the scripts recompute it at every solver step).
        conditioning = self.encode_conditioning(
            segment_ids, reference_pixels, reference_latents, skip_unused_references
        )

        # 5. Initial noise z ~ N(0, I) [B, 4, h, w] float32.
        latent_shape = (self.transformer.config.in_channels, *reference_latents.shape[-2:])
        if noise == "original":
            batch_generator = generator.initial_noise if isinstance(generator, OriginalScriptsRNG) else None
            initial_noise = self.prepare_original_initial_noise(batch, latent_shape, batch_generator, device)
        else:
            initial_noise = self.prepare_initial_noise(latent_shape, generators, device)

        # 6. DPM-Solver++(2M) with MIGE's classifier-free guidance over the DiT.
        latents = sample_mige_latents(
            self.transformer,
            conditioning.hidden_states.to(device),
            conditioning.attention_mask.to(device),
            source_latents.to(device),
            initial_noise,
            settings,
        ).latents  # [B, 4, h, w] float32
        if not torch.isfinite(latents).all():
            # bf16 overflow or broken weights: decoding would hide it as a black or noise image that still scores.
            bad = (~torch.isfinite(latents)).flatten(1).any(dim=1).nonzero().flatten().tolist()
            raise FloatingPointError(f"sampling produced NaN or infinite latents for batch row(s) {bad}")

        # 7. Decode latents / 0.18215 with the VAE, one image at a time, and quantise like save_image.
        if output_type == "latent":
            images = latents
        else:
            decoded = torch.cat([self.decode_latents(latent[None]) for latent in latents])  # [B, 3, H, W]
            pixels = to_uint8_images(decoded)  # [B, H, W, 3] uint8
            images = pixels if output_type == "np" else [PIL.Image.fromarray(array) for array in pixels]
        if not return_dict:
            return (images,)
        return MIGEPipelineOutput(images=images)

    # ------------------------------------------------------------------ the steps

    def check_inputs(
        self,
        prompt: str | Sequence[str],
        kind: PromptKind,
        reference_images: Sequence[PIL.Image.Image] | Sequence[Sequence[PIL.Image.Image]] | None,
        source_image: PIL.Image.Image | Sequence[PIL.Image.Image] | None,
        edit_task: str | Sequence[str],
    ) -> tuple[list[str], list[list[PIL.Image.Image]], list[PIL.Image.Image | None], list[str]]:
        """Normalise the call's inputs to per-prompt lists and check them against the kind.

        Returns:
            Prompts, references (the edit kind's single reference is its source), sources, edit tasks.

        Raises:
            ValueError: A kind/input mismatch or lists of different lengths.
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        batch = len(prompts)
        if kind not in TASK_SAMPLING_DEFAULTS:
            raise ValueError(f"kind must be one of {sorted(TASK_SAMPLING_DEFAULTS)}, got {kind!r}")
        sources = _per_prompt(source_image, batch, "source_image", PIL.Image.Image)
        edit_tasks = _per_prompt(edit_task, batch, "edit_task", str)
        needs_source = kind != "subject"
        if any((source is not None) != needs_source for source in sources):
            requirement = "needs" if needs_source else "takes no"
            raise ValueError(f"kind {kind!r} {requirement} source_image for every prompt")
        if kind == "edit":
            if reference_images is not None:
                raise ValueError("kind 'edit' takes no reference_images: its only reference is the source image")
            references = [[source] for source in sources]
        elif reference_images is None:
            references = [[] for _ in prompts]
        elif reference_images and isinstance(reference_images[0], PIL.Image.Image):
            if batch != 1:
                raise ValueError("with several prompts, pass reference_images as one list of images per prompt")
            references = [list(reference_images)]
        else:
            references = [list(images) for images in reference_images]
        if len(references) != batch:
            raise ValueError(f"{len(references)} reference lists for {batch} prompts")
        slots = self.multimodal_encoder.config.max_references
        for images in references:
            if len(images) > slots:
                logger.warning("%d reference images; MIGE reads at most %d, the rest are ignored", len(images), slots)
                del images[slots:]
        return prompts, references, sources, edit_tasks

    @staticmethod
    def sampling_settings(
        kind: PromptKind, steps: int | None, guidance_scale: float | None, source_guidance_scale: float | None
    ) -> SamplingSettings:
        """The kind's script defaults (:data:`TASK_SAMPLING_DEFAULTS`) with the given overrides."""
        defaults = TASK_SAMPLING_DEFAULTS[kind]
        return SamplingSettings(
            guidance_mode=defaults.guidance_mode,
            steps=defaults.steps if steps is None else steps,
            guidance_scale=defaults.guidance_scale if guidance_scale is None else guidance_scale,
            source_guidance_scale=(
                defaults.source_guidance_scale if source_guidance_scale is None else source_guidance_scale
            ),
        )

    def encode_images(
        self,
        kind: PromptKind,
        references: Sequence[Sequence[PIL.Image.Image]],
        sources: Sequence[PIL.Image.Image | None],
        generators: Sequence[torch.Generator | None],
        slots: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior samples of every reference (unscaled, zero-padded) and of the source (× 0.18215).

        subject: letterboxed references, zero source. edit: the source is the only reference and the source latent
        is that same sample scaled. subject_edit: the source gets its own, independent sample after the references.

        Returns:
            ``reference_latents [B, R, 4, h, w]`` and ``source_latents [B, 4, h, w]``, float32 on CPU.
        """
        size = self.image_size
        latent_size = size // self.vae_scale_factor
        channels = self.transformer.config.in_channels
        reference_latents = torch.zeros(len(references), slots, channels, latent_size, latent_size)
        source_latents = torch.zeros(len(references), channels, latent_size, latent_size)
        for b, (images, source, generator) in enumerate(zip(references, sources, generators, strict=True)):
            for slot, image in enumerate(images):
                pixels = vae_pixels(image, size, use_letterbox=kind == "subject")
                reference_latents[b, slot] = self.sample_posterior(pixels, generator)
            if kind == "edit":
                source_latents[b] = VAE_LATENT_SCALE * reference_latents[b, 0]
            elif kind == "subject_edit":
                pixels = vae_pixels(source, size, use_letterbox=False)
                source_latents[b] = VAE_LATENT_SCALE * self.sample_posterior(pixels, generator)
        return reference_latents, source_latents

    def sample_posterior(self, pixels: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """``mean + std · ε`` of the VAE posterior of one image ``[3, H, W]``, ε drawn on CPU → ``[4, h, w]`` fp32.

        ``generator=None`` draws from the global CPU RNG, as the scripts do.
        """
        posterior = self.vae.encode(pixels[None].to(self.vae.device, self.vae.dtype)).latent_dist
        mean, std = posterior.mean[0].float().cpu(), posterior.std[0].float().cpu()  # [4, h, w] each
        epsilon = torch.randn(mean.shape, generator=generator, dtype=torch.float32)  # [4, h, w]
        return mean + std * epsilon

    def encode_conditioning(
        self,
        segment_ids: Sequence[Sequence[Sequence[int]]],
        reference_pixels: torch.Tensor,
        reference_latents: torch.Tensor,
        skip_unused_references: bool,
    ) -> MultimodalConditioning:
        """T5 states and mask of each multimodal instruction, one sample at a time.

        One sample at a time because the original's "skip the image branch if every slot is empty" rule looks at the
        whole batch; per sample, an image's conditioning never depends on its batch.

        Returns:
            ``hidden_states [B, L, D]`` (encoder dtype, on its device) and ``attention_mask [B, L]``.
        """
        states, masks = [], []
        with self._encoder_on(self.transformer.device):
            for b, segments in enumerate(segment_ids):
                latents = reference_latents[b].to(self.transformer.device)  # [R, 4, h, w]
                tokens = self.transformer.embed_reference_latents(latents)[None]  # [1, R, N, C]
                encoded = self.multimodal_encoder(
                    [segments], reference_pixels[b : b + 1], tokens, skip_unused_references=skip_unused_references
                )
                states.append(encoded.hidden_states.to(self.transformer.device))
                masks.append(encoded.attention_mask.to(self.transformer.device))
        return MultimodalConditioning(torch.cat(states), torch.cat(masks))

    def prepare_initial_noise(
        self, latent_shape: tuple[int, int, int], generators: Sequence[torch.Generator], device: torch.device
    ) -> torch.Tensor:
        """Per-image ``z`` ``[B, 4, h, w]`` float32 on ``device``: row ``b`` drawn on CPU from image ``b``'s generator
        (after its posterior noise)."""
        rows = [torch.randn((1, *latent_shape), generator=g, dtype=torch.float32) for g in generators]
        return torch.cat(rows).to(device)

    def prepare_original_initial_noise(
        self,
        batch: int,
        latent_shape: tuple[int, int, int],
        generator: torch.Generator | None,
        device: torch.device,
    ) -> torch.Tensor:
        """The scripts' ``z``: one ``randn(B, 4, h, w)`` float32 on ``device`` per batch, from ``generator`` or the
        device's global RNG, so row ``b`` depends on the batch size and the batches drawn before."""
        if generator is not None and generator.device.type != device.type:
            raise ValueError(
                f"the initial-noise generator is on {generator.device.type} but the pipeline runs on {device.type}: "
                f"the scripts draw it on the GPU; use OriginalScriptsRNG.seeded(device={str(device)!r})"
            )
        return torch.randn((batch, *latent_shape), generator=generator, device=device, dtype=torch.float32)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """``vae.decode(latents / 0.18215)`` → ``[N, 3, H, W]`` float32 in about ``[-1, 1]``."""
        scaled = (latents / VAE_LATENT_SCALE).to(self.vae.device, self.vae.dtype)
        return self.vae.decode(scaled).sample.float()

    # ------------------------------------------------------------------ helpers

    def _posterior_generators(
        self,
        generator: torch.Generator | Sequence[torch.Generator] | OriginalScriptsRNG | None,
        batch: int,
        noise: NoiseMode,
    ) -> list[torch.Generator | None]:
        """Generators for the posterior noise, one per image: its own (per_image), or the one CPU stream of the
        scripts (original; ``None`` = torch's global CPU RNG)."""
        if noise == "original":
            if generator is None:
                return [None] * batch
            if not isinstance(generator, OriginalScriptsRNG):
                raise ValueError("noise='original' takes an OriginalScriptsRNG (or None for the global generators)")
            return [generator.posterior] * batch
        if noise != "per_image":
            raise ValueError(f"noise must be 'per_image' or 'original', got {noise!r}")
        if isinstance(generator, OriginalScriptsRNG):
            raise ValueError("an OriginalScriptsRNG replays the scripts' draws; pass it with noise='original'")
        if generator is None:
            return [torch.Generator().manual_seed(torch.Generator().seed()) for _ in range(batch)]
        generators = [generator] if isinstance(generator, torch.Generator) else list(generator)
        if len(generators) != batch:
            raise ValueError(f"{len(generators)} generators for {batch} prompts; pass one per prompt")
        if any(g.device.type != "cpu" for g in generators):
            raise ValueError("per-image generators must be CPU generators (noise is drawn on CPU, device-independent)")
        return generators

    @contextlib.contextmanager
    def _encoder_on(self, device: torch.device) -> Iterator[None]:
        """Move the offloaded encoder to ``device`` for the duration of the block, then back to CPU."""
        if not self._encoder_offload:
            yield
            return
        with temporarily_on(self.multimodal_encoder, device):
            yield


@contextlib.contextmanager
def temporarily_on(module: torch.nn.Module, device: torch.device) -> Iterator[None]:
    """Run a CPU-resident ``module`` on ``device`` for the block, then point it back at its own CPU tensors.

    ``module.to("cpu")`` afterwards would copy every weight device→host again although none changed (≈13 GB for
    the bf16 encoder); re-pointing the parameters and buffers at the tensors kept from before costs nothing.
    """
    # Module.to() swaps .data in place for CPU<->CUDA but builds new Parameter objects for other pairs (e.g. meta),
    # so keep both the objects and their CPU data, and put both back.
    parameters = [
        (owner, name, parameter, parameter.data)
        for owner in module.modules()
        for name, parameter in owner.named_parameters(recurse=False)
    ]
    buffers = [
        (owner, name, buffer) for owner in module.modules() for name, buffer in owner.named_buffers(recurse=False)
    ]
    module.to(device)
    try:
        yield
    finally:
        for owner, name, parameter, data in parameters:
            parameter.data = data
            setattr(owner, name, parameter)
        for owner, name, buffer in buffers:
            setattr(owner, name, buffer)  # Module.__setattr__ puts a tensor back in the buffer slot of that name
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _per_prompt(value: object, batch: int, name: str, single_type: type) -> list:
    """Broadcast a single value to ``batch`` prompts, or check that a sequence has one entry per prompt."""
    if value is None or isinstance(value, single_type):
        return [value] * batch
    values = list(value)  # type: ignore[call-overload]
    if len(values) != batch:
        raise ValueError(f"{name} has {len(values)} entries for {batch} prompts")
    return values
