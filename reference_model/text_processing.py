"""Text side of MIGE's multimodal instruction: caption cleaning, prompt templates, per-segment T5 tokenisation.

Reproduces the original inference scripts (``Eureka-Maggie/MIGE`` @ ``9808b79``; spec §3.1.4, §3.1.5, §3.2-§3.4):

* :func:`pre_caption` is LAVIS ``BlipCaptionProcessor.from_config(None)`` (prompt ``""``, ``max_words=88``).
* :func:`update_instruction` is the edit script's keyword → ``<imagehere>`` rewrite.
* :func:`subject_prompt`, :func:`edit_prompt`, :func:`subject_edit_prompt` are the three templates, including where
  each prefix sits relative to the caption processor (the edit prefix is added *after* it, the others *before*).
* :class:`SegmentTokenizer` splits a prompt on ``<imagehere>`` and tokenises every segment separately exactly as
  ``T5TokenizerFast`` did under transformers 4.33 / tokenizers 0.13: a segment that ends with a space keeps a trailing
  ``"▁"`` piece. transformers ≥ 5 rebuilds the T5 pipeline with a ``WhitespaceSplit`` that drops it, so the
  ``tokenizers`` pipeline is built here explicitly instead of going through ``T5Tokenizer(Fast).from_pretrained``.
"""

from __future__ import annotations

import json
import logging
import re
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tokenizers import AddedToken, Regex, Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import Unigram

logger = logging.getLogger(__name__)

IMAGE_MARKER = "<imagehere>"
"""Placeholder for one reference image; matched case-sensitively, after lower-casing by :func:`pre_caption`."""

CAPTION_MAX_WORDS = 88
SUBJECT_PREFIX = (
    "Follow the text instruction to generate an image with the given objects' images, "
    "preserving the subject's identity:\n "
)
EDIT_PREFIX = "Follow the instruction to edit the image:\n "
SUBJECT_EDIT_PREFIX = "Subject-driven editing:\n "
# Order matters: each keyword is applied to the output of the previous one (MIGE_edit_infer.py:196).
EDIT_IMAGE_KEYWORDS = ("the image", "this image", "this photo", "the photo", "the picture", "this picture")

PromptKind = Literal["subject", "edit", "subject_edit"]


# --------------------------------------------------------------------------------------------------------------------
#                                                  Prompt strings
# --------------------------------------------------------------------------------------------------------------------


def pre_caption(caption: str, max_words: int = CAPTION_MAX_WORDS) -> str:
    """Clean a caption exactly like LAVIS ``BlipCaptionProcessor.pre_caption``.

    Lower-cases (which also turns ``<ImageHere>`` into the ``<imagehere>`` marker), replaces each of ``.!"()*#:;~``
    by a space, collapses every run of two or more whitespace characters into one space (a single ``\\n`` or ``\\t``
    survives), strips, and keeps the first ``max_words`` space-separated words.

    Args:
        caption: Raw text.
        max_words: Word limit (88 in all MIGE scripts); words beyond it are dropped, markers included.

    Returns:
        The cleaned caption.
    """
    caption = re.sub(r"([.!\"()*#:;~])", " ", caption.lower())
    caption = re.sub(r"\s{2,}", " ", caption)
    caption = caption.rstrip("\n").strip(" ")
    words = caption.split(" ")
    if len(words) > max_words:
        caption = " ".join(words[:max_words])
    return caption


def update_instruction(instruction: str, task: str) -> str:
    """Point an editing instruction at the source image (``MIGE_edit_infer.py:134-144``).

    Every case-insensitive occurrence of a keyword in :data:`EDIT_IMAGE_KEYWORDS`, together with the whitespace around
    it, becomes ``" <imagehere> "``. There are no word boundaries, on purpose: the original turns "the photograph"
    into ``" <imagehere> graph"``. If no marker results, trailing dots are stripped and ``" of<imagehere>"``
    (``task == "global"``) or ``" in<imagehere>"`` (any other task) is appended.

    Args:
        instruction: Raw editing instruction (not yet caption-processed).
        task: Emu-Edit task name; only ``"global"`` is special.

    Returns:
        The instruction with at least one ``<imagehere>`` marker.
    """
    for keyword in EDIT_IMAGE_KEYWORDS:
        instruction = re.sub(r"\s*" + re.escape(keyword) + r"\s*", f" {IMAGE_MARKER} ", instruction, flags=re.I)
    if IMAGE_MARKER not in instruction:
        preposition = "of" if task == "global" else "in"
        instruction = f"{instruction.rstrip('.')} {preposition}{IMAGE_MARKER}"
    return instruction


def subject_prompt(multi_prompt: str) -> str:
    """Subject-driven generation prompt: the prefix goes through the caption processor with the prompt (§3.2)."""
    return pre_caption(SUBJECT_PREFIX + multi_prompt)


def edit_prompt(instruction: str, task: str) -> str:
    """Instruction-editing prompt: only the updated instruction is caption-processed; the prefix is kept verbatim."""
    return EDIT_PREFIX + pre_caption(update_instruction(instruction, task))


def subject_edit_prompt(multi_prompt: str) -> str:
    """Subject-driven editing (MIGEBench) prompt: prefix and prompt go through the caption processor together."""
    return pre_caption(SUBJECT_EDIT_PREFIX + multi_prompt)


def format_prompt(kind: PromptKind, instruction: str, edit_task: str = "local") -> str:
    """Build the processed prompt of one of MIGE's three tasks.

    Args:
        kind: ``"subject"`` (generation from reference objects), ``"edit"`` (instruction editing) or
            ``"subject_edit"`` (subject-driven editing).
        instruction: The multimodal prompt (``<ImageHere>`` markers allowed, any case) or the editing instruction.
        edit_task: Emu-Edit task name, used by ``"edit"`` only (``"global"`` appends ``of`` instead of ``in``).

    Returns:
        The prompt string that is split on ``<imagehere>`` and tokenised.
    """
    if kind == "subject":
        return subject_prompt(instruction)
    if kind == "edit":
        return edit_prompt(instruction, edit_task)
    if kind == "subject_edit":
        return subject_edit_prompt(instruction)
    raise ValueError(f"unknown prompt kind {kind!r}; expected 'subject', 'edit' or 'subject_edit'")


def split_prompt_segments(prompt: str) -> list[str]:
    """Split on the literal ``<imagehere>``: k markers give k + 1 (possibly empty) text segments."""
    return prompt.split(IMAGE_MARKER)


# --------------------------------------------------------------------------------------------------------------------
#                                         SentencePiece model → tokenizers
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _SentencePieceModel:
    """The parts of a ``spiece.model`` protobuf that the transformers-4.33 ``T5Converter`` reads."""

    pieces: list[tuple[str, float]]
    unk_id: int
    precompiled_charsmap: bytes


def _iter_proto_fields(buffer: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """Yield ``(field_number, wire_type, value)`` of one protobuf message (value: int, bytes, or raw 4/8 bytes)."""
    position = 0

    def read_varint() -> int:
        nonlocal position
        result, shift = 0, 0
        while True:
            byte = buffer[position]
            position += 1
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                return result
            shift += 7

    while position < len(buffer):
        key = read_varint()
        field_number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            yield field_number, wire_type, read_varint()
        elif wire_type == 2:
            length = read_varint()
            yield field_number, wire_type, buffer[position : position + length]
            position += length
        elif wire_type in (1, 5):
            width = 8 if wire_type == 1 else 4
            yield field_number, wire_type, buffer[position : position + width]
            position += width
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type} in SentencePiece model")


def _read_sentencepiece_model(path: Path) -> _SentencePieceModel:
    """Parse ``spiece.model`` without the protobuf package (field numbers from ``sentencepiece_model.proto``)."""
    # ModelProto: 1 = repeated SentencePiece pieces, 2 = TrainerSpec, 3 = NormalizerSpec.
    # SentencePiece: 1 = piece, 2 = score (float). TrainerSpec: 40 = unk_id. NormalizerSpec: 2 = precompiled_charsmap.
    pieces: list[tuple[str, float]] = []
    unk_id, charsmap = 0, b""
    for field, _, value in _iter_proto_fields(path.read_bytes()):
        if field == 1:
            piece, score = "", 0.0
            for sub_field, _, sub_value in _iter_proto_fields(value):
                if sub_field == 1:
                    piece = sub_value.decode("utf-8")
                elif sub_field == 2:
                    score = struct.unpack("<f", sub_value)[0]
            pieces.append((piece, score))
        elif field == 2:
            unk_id = next((v for f, _, v in _iter_proto_fields(value) if f == 40), unk_id)
        elif field == 3:
            charsmap = next((v for f, _, v in _iter_proto_fields(value) if f == 2), charsmap)
    return _SentencePieceModel(pieces, unk_id, charsmap)


def _t5_fast_tokenizer_from_sentencepiece(path: Path, extra_ids: int) -> Tokenizer:
    """Rebuild what transformers 4.33 ``T5TokenizerFast`` converted a bare ``spiece.model`` into.

    Unigram over the SentencePiece pieces plus ``<extra_id_{n-1}>`` … ``<extra_id_0>`` (score 0); normalizer
    Precompiled(charsmap) then ``" {2,}" → " "``; pre-tokenizer Metaspace("▁", always prepend, split on spaces) with no
    whitespace pre-split, which is what keeps the trailing ``"▁"`` of a segment ending in a space.
    """
    model = _read_sentencepiece_model(path)
    vocab = model.pieces + [(f"<extra_id_{i}>", 0.0) for i in range(extra_ids - 1, -1, -1)]
    tokenizer = Tokenizer(Unigram(vocab, model.unk_id))
    collapse_spaces = normalizers.Replace(Regex(" {2,}"), " ")
    if model.precompiled_charsmap:
        tokenizer.normalizer = normalizers.Sequence(
            [normalizers.Precompiled(model.precompiled_charsmap), collapse_spaces]
        )
    else:
        tokenizer.normalizer = normalizers.Sequence([collapse_spaces])
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    return tokenizer


# --------------------------------------------------------------------------------------------------------------------
#                                                Segment tokenizer
# --------------------------------------------------------------------------------------------------------------------


def _token_content(token: str | dict) -> str:
    """A special token as written in ``tokenizer_config.json``: a string or a serialised ``AddedToken``."""
    return token["content"] if isinstance(token, dict) else token


class SegmentTokenizer:
    """T5 tokenisation of a multimodal prompt, one token list per ``<imagehere>``-separated segment.

    No special tokens are added (MIGE appends EOS itself, to the last segment only, when splicing).

    Args:
        tokenizer: A ``tokenizers.Tokenizer`` with the transformers-4.33 T5 fast pipeline.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer

    @classmethod
    def from_pretrained(cls, path: str | Path) -> SegmentTokenizer:
        """Load from a T5 tokenizer folder (the release's ``t5-v1_1-xxl``) or a ``tokenizer.json`` file.

        A ``tokenizer.json`` is used as saved (that is what ``T5TokenizerFast.from_pretrained`` did under 4.33);
        without one, the fast tokenizer is converted from ``spiece.model`` the way 4.33 did. Special tokens
        (``<pad>``, ``</s>``, ``<unk>``, ``<extra_id_*>``) are registered as 4.33 did, so a literal ``</s>`` in a
        prompt stays one token.

        Args:
            path: Folder with ``tokenizer.json`` and/or ``spiece.model`` (+ optional ``tokenizer_config.json``),
                or the path of a ``tokenizer.json``.

        Returns:
            The segment tokenizer.
        """
        path = Path(path)
        folder = path if path.is_dir() else path.parent
        config_file = folder / "tokenizer_config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        extra_ids = int(config.get("extra_ids", 100))
        tokenizer_file = path if path.is_file() else folder / "tokenizer.json"
        if tokenizer_file.is_file():
            tokenizer = Tokenizer.from_file(str(tokenizer_file))
            logger.debug("loaded T5 tokenizer from %s", tokenizer_file)
        elif (folder / "spiece.model").is_file():
            tokenizer = _t5_fast_tokenizer_from_sentencepiece(folder / "spiece.model", extra_ids)
            logger.debug("converted T5 tokenizer from %s", folder / "spiece.model")
        else:
            raise FileNotFoundError(f"no tokenizer.json or spiece.model in {folder}")
        special = [
            _token_content(config.get(name, default))
            for name, default in (("pad_token", "<pad>"), ("eos_token", "</s>"), ("unk_token", "<unk>"))
        ]
        special += [f"<extra_id_{i}>" for i in range(extra_ids)]
        tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in special])
        return cls(tokenizer)

    def tokenize_segment(self, segment: str) -> list[int]:
        """Token ids of one text segment, without special tokens (an empty segment gives ``[]``)."""
        return self.tokenizer.encode(segment, add_special_tokens=False).ids

    def __call__(self, prompt: str) -> list[list[int]]:
        """Split ``prompt`` on ``<imagehere>`` and tokenise every segment separately.

        Args:
            prompt: A processed prompt (see :func:`format_prompt`).

        Returns:
            ``k + 1`` token-id lists for ``k`` markers.
        """
        return [self.tokenize_segment(segment) for segment in split_prompt_segments(prompt)]

    def batch(self, prompts: Sequence[str]) -> list[list[list[int]]]:
        """:meth:`__call__` for every prompt of a batch."""
        return [self(prompt) for prompt in prompts]
