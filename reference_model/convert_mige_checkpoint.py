"""Convert the official MIGE release (HF ``EurekaTian/MIGE``) into a ``MIGEPipeline`` folder.

Reads ``model.pth`` (the whole original ``MIGE.state_dict()``, 1,451 keys, bf16; spec §2) together with the config
folders the original code reads at inference (``t5-v1_1-xxl``: ``config.json`` + tokenizer files;
``bert-base-uncased``: ``config.json``; ``sd-vae-ft-ema``: the diffusers VAE) and writes a ``save_pretrained``
pipeline folder (safetensors). Nothing else of the release is needed: every trained weight, the fine-tuned T5 included,
is in ``model.pth``.

Every key is accounted for: each original key must map onto the DiT or the multimodal encoder, every model key must be
produced, every shape must match. The original loads with ``strict=False``, which would silently keep a *random*
null caption (``y_embedder.y_embedding``) or FFM if the file lacked them; here any such problem aborts the conversion.

Usage::

    python -m reference_model.convert_mige_checkpoint --release path/to/EurekaTian-MIGE --out models/mige
    mige-bench convert-mige --release path/to/EurekaTian-MIGE --out models/mige
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NoReturn

import torch
from diffusers import AutoencoderKL
from transformers import PreTrainedTokenizerFast

from reference_model.multimodal_encoder import (
    MIGEMultimodalEncoder,
    convert_original_encoder_state_dict,
    is_original_encoder_key,
)
from reference_model.pipeline_mige import MIGEPipeline
from reference_model.text_processing import SegmentTokenizer
from reference_model.transformer_mige import (
    MIGE_TRANSFORMER_SIZES,
    MIGETransformer2DModel,
    convert_original_transformer_state_dict,
    is_original_transformer_key,
    transformer_config_from_original,
)

logger = logging.getLogger(__name__)

# Constructor arguments of the released model that no config file records (spec §1): the inference scripts build
# MIGE_XL_2(input_size=64, lewei_scale=1), whose EVA ViT-g is hard-coded in MIGE.__init__, and FFM has 8 heads.
RELEASE_MIGE_KWARGS: dict[str, object] = {**MIGE_TRANSFORMER_SIZES["MIGE_XL_2"], "input_size": 64, "lewei_scale": 1}
RELEASE_EVA_KWARGS: dict[str, object] = {"embed_dim": 1408, "depth": 39, "num_heads": 16, "mlp_ratio": 4.3637}
RELEASE_FFM_NUM_HEADS = 8

# Folder and file names inside a download of the release.
RELEASE_HUB_ID = "EurekaTian/MIGE"
RELEASE_CHECKPOINT = "model.pth"
RELEASE_T5_FOLDER = "t5-v1_1-xxl"
RELEASE_BERT_FOLDER = "bert-base-uncased"
RELEASE_VAE_FOLDER = "sd-vae-ft-ema"
# What the conversion reads of the release, as `hf download --include` patterns: the rest (the T5 weights among it,
# tens of GB) is not needed because model.pth holds every trained tensor. One --include per pattern: `hf` reads
# `--include a b` as the pattern a plus the file names b, and then ignores --include, dropping a.
RELEASE_DOWNLOAD_PATTERNS = (
    RELEASE_CHECKPOINT,
    f"{RELEASE_T5_FOLDER}/*.json",
    f"{RELEASE_T5_FOLDER}/spiece.model",
    f"{RELEASE_BERT_FOLDER}/config.json",
    f"{RELEASE_VAE_FOLDER}/*",
)

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def release_download_command(local_dir: Path) -> str:
    """The shell command that downloads what the conversion reads of the release into ``local_dir``."""
    includes = [word for pattern in RELEASE_DOWNLOAD_PATTERNS for word in ("--include", pattern)]
    return shlex.join(["hf", "download", RELEASE_HUB_ID, *includes, "--local-dir", str(local_dir)])


def model_configs(
    t5_config: Mapping,
    bert_config: Mapping,
    mige_kwargs: Mapping[str, object] = RELEASE_MIGE_KWARGS,
    eva_kwargs: Mapping[str, object] = RELEASE_EVA_KWARGS,
    ffm_num_heads: int = RELEASE_FFM_NUM_HEADS,
) -> tuple[dict, dict]:
    """Constructor kwargs of the encoder and the DiT from the original's configs and constructor arguments.

    Args:
        t5_config: ``t5-v1_1-xxl/config.json``.
        bert_config: ``bert-base-uncased/config.json`` (the Q-Former's).
        mige_kwargs: Arguments of the original ``MIGE(...)`` constructor (defaults: the release's).
        eva_kwargs: The EVA ViT's ``embed_dim``, ``depth``, ``num_heads``, ``mlp_ratio``.
        ffm_num_heads: FFM attention heads.

    Returns:
        ``(encoder_kwargs, transformer_kwargs)``.
    """
    transformer_kwargs = transformer_config_from_original({"caption_channels": t5_config["d_model"], **mige_kwargs})
    encoder_kwargs = MIGEMultimodalEncoder.config_from_original(
        t5_config,
        bert_config,
        vision_hidden_size=int(eva_kwargs["embed_dim"]),
        vision_num_layers=int(eva_kwargs["depth"]),
        vision_num_heads=int(eva_kwargs["num_heads"]),
        vision_mlp_ratio=float(eva_kwargs["mlp_ratio"]),
        reference_token_dim=int(transformer_kwargs.get("hidden_size", 1152)),
        ffm_num_heads=ffm_num_heads,
        num_query_tokens=int(mige_kwargs.get("num_query_token", 32)),
        cross_attention_frequency=int(mige_kwargs.get("cross_attention_freq", 2)),
        max_length=int(mige_kwargs.get("max_len", 256)),
    )
    return encoder_kwargs, transformer_kwargs


def convert_original_state_dict(
    original_state_dict: Mapping[str, torch.Tensor],
    encoder: MIGEMultimodalEncoder,
    transformer: MIGETransformer2DModel,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Split and map a whole original ``MIGE.state_dict()`` onto the two models, strictly.

    Args:
        original_state_dict: ``model.pth['state_dict']`` (tensors may be on ``meta``).
        encoder: Target encoder (may be on ``meta``).
        transformer: Target DiT (may be on ``meta``).

    Returns:
        ``(encoder_state_dict, transformer_state_dict)``, each complete for ``load_state_dict(strict=True)``.

    Raises:
        ValueError: A key that belongs to neither model, or any unmapped, missing, untied or misshapen key (the
            message lists all of them).
    """
    orphans = [
        key for key in original_state_dict if not is_original_encoder_key(key) and not is_original_transformer_key(key)
    ]
    problems = [f"original key {key!r} belongs to neither the DiT nor the multimodal encoder" for key in orphans]
    converted = []
    for convert, model in (
        (convert_original_encoder_state_dict, encoder),
        (convert_original_transformer_state_dict, transformer),
    ):
        try:
            converted.append(convert(original_state_dict, model))
        except ValueError as error:
            problems.append(str(error))
    if problems:
        raise ValueError("the checkpoint does not match the MIGE architecture:\n" + "\n".join(problems))
    return converted[0], converted[1]


def load_original_models(
    original_state_dict: Mapping[str, torch.Tensor],
    encoder_kwargs: Mapping,
    transformer_kwargs: Mapping,
    dtype: torch.dtype | None = None,
) -> tuple[MIGEMultimodalEncoder, MIGETransformer2DModel]:
    """Build both models without initialising them (``meta``) and load an original state dict into them.

    The tensors of ``original_state_dict`` are used in place (``assign``), so a memory-mapped checkpoint is not
    copied unless ``dtype`` differs from the file's.

    Args:
        original_state_dict: The original ``MIGE.state_dict()``.
        encoder_kwargs: :class:`MIGEMultimodalEncoder` arguments (see :func:`model_configs`).
        transformer_kwargs: :class:`MIGETransformer2DModel` arguments.
        dtype: Cast every floating tensor to this dtype (``None``: keep the file's).

    Returns:
        ``(encoder, transformer)`` in eval mode.
    """
    with torch.device("meta"):
        encoder = MIGEMultimodalEncoder(**encoder_kwargs)
        transformer = MIGETransformer2DModel(**transformer_kwargs)
    encoder_state, transformer_state = convert_original_state_dict(original_state_dict, encoder, transformer)
    for model, state in ((encoder, encoder_state), (transformer, transformer_state)):
        if dtype is not None:
            state = {key: value.to(dtype) if value.is_floating_point() else value for key, value in state.items()}
        model.load_state_dict(state, strict=True, assign=True)
        model.eval()
    return encoder, transformer


def load_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """``model.pth`` as a state dict: ``weights_only`` (no pickled code runs), memory-mapped, ``['state_dict']``.

    Raises:
        ValueError: The file is not a PyTorch zip archive (empty, truncated or corrupt), or holds no state dict.
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as error:
        # torch reports a damaged archive as a RuntimeError whose advice (re-save it with torch.save) is wrong for a
        # downloaded file; the usual cause is an interrupted download.
        raise ValueError(
            f"{path} ({path.stat().st_size:,} bytes) is not a readable PyTorch checkpoint, e.g. an interrupted "
            "download: delete it and download it again."
        ) from error
    if isinstance(checkpoint, Mapping) and "state_dict" in checkpoint:
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"{path} holds a {type(checkpoint).__name__}, not a state dict")
    return dict(checkpoint)


class _ReleaseConfig(dict):
    """A ``config.json`` of the release; a key the conversion needs and the file lacks is an error naming the file.

    The configs are read by ``model_configs`` and the encoder's ``config_from_original`` with ``config[key]``; a bare
    ``KeyError: 'd_model'`` would not say which of the release's files is incomplete.

    Args:
        path: The ``config.json`` file.

    Raises:
        ValueError: The file is not JSON (e.g. empty after an interrupted download).
    """

    def __init__(self, path: Path) -> None:
        try:
            content = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{path} is not valid JSON ({error}): delete it and download it again.") from error
        super().__init__(content)
        self.path = path

    def __missing__(self, key: str) -> NoReturn:
        raise ValueError(f"{self.path} has no {key!r}, which the conversion needs: download it again.")


def t5_fast_tokenizer(t5_folder: Path) -> PreTrainedTokenizerFast:
    """The T5 tokenizer with the transformers-4.33 fast pipeline, in a class ``save_pretrained`` keeps verbatim."""
    segment_tokenizer = SegmentTokenizer.from_pretrained(t5_folder)
    return PreTrainedTokenizerFast(
        tokenizer_object=segment_tokenizer.tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )


def convert_mige_checkpoint(
    checkpoint: Path,
    t5_folder: Path,
    bert_folder: Path,
    vae_folder: Path,
    output_folder: Path,
    dtype: torch.dtype = torch.bfloat16,
    mige_kwargs: Mapping[str, object] = RELEASE_MIGE_KWARGS,
    eva_kwargs: Mapping[str, object] = RELEASE_EVA_KWARGS,
    ffm_num_heads: int = RELEASE_FFM_NUM_HEADS,
) -> MIGEPipeline:
    """Convert the release and write the pipeline to ``output_folder``.

    Args:
        checkpoint: ``model.pth``.
        t5_folder: ``t5-v1_1-xxl`` (``config.json`` and ``tokenizer.json`` or ``spiece.model``; no weights needed).
        bert_folder: ``bert-base-uncased`` (``config.json`` only).
        vae_folder: ``sd-vae-ft-ema`` (diffusers format); saved in fp32 whatever ``dtype`` is.
        output_folder: Destination of ``save_pretrained``.
        dtype: Dtype of the DiT and encoder weights (the release is bf16, the precision MIGE runs in).
        mige_kwargs: Original ``MIGE(...)`` arguments (tests pass tiny ones; default: the release's).
        eva_kwargs: EVA ViT sizes (default: the release's).
        ffm_num_heads: FFM heads (default: the release's).

    Returns:
        The converted pipeline (also written to ``output_folder``).
    """
    t5_config = _ReleaseConfig(t5_folder / "config.json")
    bert_config = _ReleaseConfig(bert_folder / "config.json")
    encoder_kwargs, transformer_kwargs = model_configs(t5_config, bert_config, mige_kwargs, eva_kwargs, ffm_num_heads)
    original_state_dict = load_checkpoint(checkpoint)
    logger.info("read %d tensors from %s", len(original_state_dict), checkpoint)
    encoder, transformer = load_original_models(original_state_dict, encoder_kwargs, transformer_kwargs, dtype)
    vae = AutoencoderKL.from_pretrained(vae_folder, dtype=torch.float32)
    pipeline = MIGEPipeline(transformer, encoder, vae, t5_fast_tokenizer(t5_folder))
    pipeline.save_pretrained(output_folder, safe_serialization=True)
    logger.info("wrote the MIGE pipeline to %s", output_folder)
    return pipeline


# --------------------------------------------------------------------------------------------------------------------
#                                                  Command line
# --------------------------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The converter's flags (shared with ``mige-bench convert-mige``)."""
    parser.add_argument(
        "--release",
        type=Path,
        help=f"download of {RELEASE_HUB_ID} holding {RELEASE_CHECKPOINT}, {RELEASE_T5_FOLDER}/, "
        f"{RELEASE_BERT_FOLDER}/ and {RELEASE_VAE_FOLDER}/",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder of the converted pipeline")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="weight dtype of DiT + encoder (bf16)")
    parser.add_argument("--checkpoint", type=Path, help=f"{RELEASE_CHECKPOINT} (default: inside --release)")
    parser.add_argument("--t5", type=Path, help=f"T5 config/tokenizer folder (default: --release/{RELEASE_T5_FOLDER})")
    parser.add_argument("--bert", type=Path, help=f"Q-Former config folder (default: --release/{RELEASE_BERT_FOLDER})")
    parser.add_argument("--vae", type=Path, help=f"VAE folder (default: --release/{RELEASE_VAE_FOLDER})")


def run_from_arguments(args: argparse.Namespace) -> Path:
    """Resolve the paths of parsed arguments, check they exist, convert; returns the output folder.

    Raises:
        FileNotFoundError: A required file or folder is missing (all missing paths are listed, then the command that
            downloads them).
        ValueError: A file of the release is unreadable or incomplete, or does not match the MIGE architecture.
    """
    release = args.release
    defaults = {
        "checkpoint": RELEASE_CHECKPOINT,
        "t5": RELEASE_T5_FOLDER,
        "bert": RELEASE_BERT_FOLDER,
        "vae": RELEASE_VAE_FOLDER,
    }
    paths = {
        name: getattr(args, name) or (release / default if release is not None else None)
        for name, default in defaults.items()
    }
    required = {
        "checkpoint": paths["checkpoint"],
        "T5 config": paths["t5"] and paths["t5"] / "config.json",
        "Q-Former (bert) config": paths["bert"] and paths["bert"] / "config.json",
        "VAE config": paths["vae"] and paths["vae"] / "config.json",
    }
    missing = [
        f"{name}: {path if path else 'not given (use --release or its own flag)'}"
        for name, path in required.items()
        if not path or not path.exists()
    ]
    if missing:
        raise FileNotFoundError(
            "missing inputs of the MIGE conversion:\n  "
            + "\n  ".join(missing)
            + f"\ndownload them with: {release_download_command(release or Path('mige_release'))}"
        )
    convert_mige_checkpoint(
        paths["checkpoint"], paths["t5"], paths["bert"], paths["vae"], args.out, dtype=DTYPES[args.dtype]
    )
    return args.out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m reference_model.convert_mige_checkpoint``; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        output = run_from_arguments(args)
    except (FileNotFoundError, ValueError) as error:
        parser.exit(2, f"error: {error}\n")
    print(f"converted MIGE pipeline: {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
