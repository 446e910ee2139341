"""convert_mige_checkpoint: the full-size key set against the release manifest, and a tiny release end to end."""

from __future__ import annotations

import ast
import io
import json
import re
from pathlib import Path

import pytest
import torch
from mige_tiny import TINY_TRANSFORMER, random_image, tiny_pipeline

from reference_model.convert_mige_checkpoint import (
    RELEASE_BERT_FOLDER,
    RELEASE_CHECKPOINT,
    RELEASE_T5_FOLDER,
    RELEASE_VAE_FOLDER,
    convert_mige_checkpoint,
    convert_original_state_dict,
    load_original_models,
    main,
    model_configs,
)
from reference_model.pipeline_mige import MIGEPipeline

MANIFEST = Path(__file__).resolve().parents[3] / "shared" / "docs" / "mige_state_dict_manifest.tsv"
# Original keys the converter drops on purpose: an unused buffer and the tied alias of the T5 embedding.
DROPPED_KEYS = {"Qformer.bert.embeddings.position_ids", "t5_model.shared.weight"}


def read_manifest() -> dict[str, torch.Tensor]:
    """The release's state dict as ``meta`` tensors of the manifest's shapes and dtypes."""
    original = {}
    for line in MANIFEST.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape, dtype = line.split("\t")[:3]
        original[key] = torch.empty(ast.literal_eval(shape), dtype=getattr(torch, dtype), device="meta")
    return original


def test_full_size_architecture_matches_every_key_and_shape_of_the_release_manifest() -> None:
    if not MANIFEST.is_file():
        pytest.skip(f"state-dict manifest not found at {MANIFEST} (provide ../shared)")
    original = read_manifest()
    assert len(original) == 1451
    t5_config = {"d_model": 4096, "d_kv": 64, "num_heads": 64, "d_ff": 10240, "num_layers": 24, "vocab_size": 32128}
    bert_config = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072}
    encoder, transformer = load_original_models(original, *model_configs(t5_config, bert_config))

    mapped = {**encoder.state_dict(), **{f"dit.{k}": v for k, v in transformer.state_dict().items()}}
    assert all(tensor.is_meta for tensor in mapped.values())
    assert len(mapped) == len(original) - len(DROPPED_KEYS)
    # Every model tensor came from the file: same element count overall, and every shape is the manifest's.
    assert sum(t.numel() for t in mapped.values()) == sum(
        t.numel() for key, t in original.items() if key not in DROPPED_KEYS
    )
    assert {tuple(t.shape) for t in mapped.values()} <= {tuple(t.shape) for t in original.values()}
    assert encoder.text_encoder.embed_tokens.weight.dtype == torch.bfloat16  # the file's dtype, kept
    assert transformer.null_caption.shape == original["y_embedder.y_embedding"].shape


# ------------------------------------------------------------------------------------------------ tiny release

# Our key → original key (inverse of the two converters' rules), to write a tiny model.pth in the original layout.
_ENCODER_TO_ORIGINAL = (
    (r"^vision_encoder\.patch_embed\.", "visual_encoder.patch_embed.proj."),
    (r"^vision_encoder\.", "visual_encoder."),
    (r"^qformer\.layernorm\.", "Qformer.bert.embeddings.LayerNorm."),
    (
        r"^qformer\.encoder\.layer\.(\d+)\.(attention|crossattention)\.attention\.",
        r"Qformer.bert.encoder.layer.\1.\2.self.",
    ),
    (r"^qformer\.", "Qformer.bert."),
    (r"^ffm\.(q|k|v)_proj\.", r"FFM.\1_proj_1."),
    (r"^ffm\.ln_(q|k|v)\.", r"FFM.ln_\1_1."),
    (r"^ffm\.attention\.", "FFM.clip_attn."),
    (r"^ffm\.", "FFM."),
    (r"^text_encoder\.", "t5_model.encoder."),
)
_TRANSFORMER_TO_ORIGINAL = (
    (r"^t_embedder\.linear_1\.", "t_embedder.mlp.0."),
    (r"^t_embedder\.linear_2\.", "t_embedder.mlp.2."),
    (r"^t_block\.", "t_block.1."),
    (r"^y_embedder\.linear_1\.", "y_embedder.y_proj.fc1."),
    (r"^y_embedder\.linear_2\.", "y_embedder.y_proj.fc2."),
    (r"^null_caption$", "y_embedder.y_embedding"),
    (r"\.self_attn\.", ".attn."),
)


def _rename(state_dict: dict[str, torch.Tensor], rules) -> dict[str, torch.Tensor]:
    renamed = {}
    for key, tensor in state_dict.items():
        for pattern, replacement in rules:
            key = re.sub(pattern, replacement, key)
        renamed[key] = tensor
    return renamed


def original_state_dict(pipe: MIGEPipeline) -> dict[str, torch.Tensor]:
    """The tiny pipeline's weights under the original ``MIGE.state_dict()`` names, incl. the keys MIGE also saves."""
    original = {
        **_rename(pipe.multimodal_encoder.state_dict(), _ENCODER_TO_ORIGINAL),
        **_rename(pipe.transformer.state_dict(), _TRANSFORMER_TO_ORIGINAL),
    }
    original["t5_model.shared.weight"] = original["t5_model.encoder.embed_tokens.weight"]
    original["Qformer.bert.embeddings.position_ids"] = torch.arange(512)[None]
    return {key: tensor.clone() for key, tensor in original.items()}


def write_tiny_release(pipe: MIGEPipeline, folder: Path, state_dict: dict[str, torch.Tensor]) -> None:
    """A miniature of the EurekaTian/MIGE download: model.pth, t5/bert config folders, the VAE."""
    encoder = pipe.multimodal_encoder.config
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state_dict, "epoch": 3}, folder / RELEASE_CHECKPOINT)
    t5 = folder / RELEASE_T5_FOLDER
    t5.mkdir()
    t5_config = {"d_model": encoder.t5_d_model, "d_kv": encoder.t5_d_kv, "num_heads": encoder.t5_num_heads,
                 "d_ff": encoder.t5_d_ff, "num_layers": encoder.t5_num_layers, "vocab_size": encoder.t5_vocab_size,
                 "feed_forward_proj": "gated-gelu", "eos_token_id": 1, "pad_token_id": 0}  # fmt: skip
    (t5 / "config.json").write_text(json.dumps(t5_config))
    pipe.tokenizer.backend_tokenizer.save(str(t5 / "tokenizer.json"))
    bert = folder / RELEASE_BERT_FOLDER
    bert.mkdir()
    bert_config = {"hidden_size": encoder.qformer_hidden_size, "num_hidden_layers": encoder.qformer_num_layers,
                   "num_attention_heads": encoder.qformer_num_heads,
                   "intermediate_size": encoder.qformer_intermediate_size}  # fmt: skip
    (bert / "config.json").write_text(json.dumps(bert_config))
    pipe.vae.save_pretrained(folder / RELEASE_VAE_FOLDER)


def tiny_architecture(pipe: MIGEPipeline) -> dict:
    """The constructor arguments of the tiny model in the original's terms (what the release hard-codes)."""
    encoder = pipe.multimodal_encoder.config
    return {
        "mige_kwargs": {**TINY_TRANSFORMER, "caption_channels": encoder.t5_d_model,
                        "num_query_token": encoder.num_query_tokens, "max_len": encoder.max_length},
        "eva_kwargs": {"embed_dim": encoder.vision_hidden_size, "depth": encoder.vision_num_layers,
                       "num_heads": encoder.vision_num_heads,
                       "mlp_ratio": encoder.vision_intermediate_size / encoder.vision_hidden_size},
        "ffm_num_heads": encoder.ffm_num_heads,
    }  # fmt: skip


@pytest.fixture(scope="module")
def tiny() -> MIGEPipeline:
    return tiny_pipeline(seed=3)


def test_tiny_release_converts_to_a_pipeline_with_the_same_weights_and_images(tiny, tmp_path: Path) -> None:
    release, out = tmp_path / "release", tmp_path / "converted"
    write_tiny_release(tiny, release, original_state_dict(tiny))
    convert_mige_checkpoint(
        release / RELEASE_CHECKPOINT,
        release / RELEASE_T5_FOLDER,
        release / RELEASE_BERT_FOLDER,
        release / RELEASE_VAE_FOLDER,
        out,
        dtype=torch.float32,
        **tiny_architecture(tiny),
    )
    assert (out / "model_index.json").is_file()
    converted = MIGEPipeline.from_pretrained(out)
    for name in ("transformer", "multimodal_encoder", "vae"):
        expected, actual = getattr(tiny, name).state_dict(), getattr(converted, name).state_dict()
        assert expected.keys() == actual.keys(), name
        assert all(torch.equal(expected[key], actual[key]) for key in expected), name
    image = random_image(70, 50, 4)
    kwargs = {"num_inference_steps": 2, "output_type": "np"}
    reference = tiny(
        "make the photo red", "edit", source_image=image, generator=torch.Generator().manual_seed(1), **kwargs
    )
    result = converted(
        "make the photo red", "edit", source_image=image, generator=torch.Generator().manual_seed(1), **kwargs
    )
    assert (reference.images == result.images).all()


def test_conversion_casts_weights_to_bf16_by_default(tiny) -> None:
    encoder_kwargs, transformer_kwargs = model_configs(
        {"d_model": 32, "d_kv": 8, "num_heads": 4, "d_ff": 64, "num_layers": 2, "vocab_size": 2112},
        {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64},
        **tiny_architecture(tiny),
    )
    assert encoder_kwargs == {key: tiny.multimodal_encoder.config[key] for key in encoder_kwargs}
    encoder, transformer = load_original_models(
        original_state_dict(tiny), encoder_kwargs, transformer_kwargs, dtype=torch.bfloat16
    )
    assert {p.dtype for p in [*encoder.parameters(), *transformer.parameters()]} == {torch.bfloat16}
    torch.testing.assert_close(transformer.null_caption, tiny.transformer.null_caption.to(torch.bfloat16))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda sd: sd.pop("y_embedder.y_embedding"), "missing from the original state dict: 'null_caption'"),
        (lambda sd: sd.pop("FFM.mlp.weight"), "missing from the original state dict: 'ffm.mlp.weight'"),
        (lambda sd: sd.__setitem__("ema.decay", torch.ones(1)), "'ema.decay' belongs to neither"),
        (lambda sd: sd.__setitem__("t5_proj.bias", torch.zeros(3)), "shape of 't5_proj.bias'"),
        (lambda sd: sd.__setitem__("blocks.0.attn.rel_pos_h", torch.zeros(3)), "unmapped original DiT key"),
    ],
    ids=["random_null_caption", "random_ffm", "foreign_key", "wrong_shape", "unknown_dit_key"],
)
def test_any_key_problem_aborts_the_conversion(tiny, edit, message: str) -> None:
    state = original_state_dict(tiny)
    edit(state)
    encoder_kwargs, transformer_kwargs = model_configs(
        {"d_model": 32, "d_kv": 8, "num_heads": 4, "d_ff": 64, "num_layers": 2, "vocab_size": 2112},
        {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64},
        **tiny_architecture(tiny),
    )
    with torch.device("meta"):
        encoder = type(tiny.multimodal_encoder)(**encoder_kwargs)
        transformer = type(tiny.transformer)(**transformer_kwargs)
    with pytest.raises(ValueError, match=re.escape(message)):
        convert_original_state_dict(state, encoder, transformer)


def test_command_line_lists_every_missing_input(tmp_path: Path, capsys) -> None:
    (tmp_path / RELEASE_T5_FOLDER).mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main(["--release", str(tmp_path), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    for expected in (RELEASE_CHECKPOINT, f"{RELEASE_T5_FOLDER}/config.json", RELEASE_BERT_FOLDER, RELEASE_VAE_FOLDER):
        assert expected in error
    assert not (tmp_path / "out").exists()


def test_mige_bench_convert_mige_has_the_converter_flags_and_reports_missing_inputs(tmp_path: Path, capsys) -> None:
    import argparse

    from mige_bench import cli
    from reference_model.convert_mige_checkpoint import add_arguments

    converter = argparse.ArgumentParser()
    add_arguments(converter)
    subcommands = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    flags = {option for action in converter._actions for option in action.option_strings}
    assert flags | {"-v", "--verbose"} == {
        option for action in subcommands.choices["convert-mige"]._actions for option in action.option_strings
    }
    assert cli.main(["convert-mige", "--release", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert RELEASE_CHECKPOINT in capsys.readouterr().err


def test_missing_inputs_come_with_the_command_that_downloads_them(tmp_path: Path, capsys) -> None:
    from mige_bench import cli

    assert cli.main(["convert-mige", "--release", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == (
        "error: missing inputs of the MIGE conversion:\n"
        f"  checkpoint: {tmp_path / RELEASE_CHECKPOINT}\n"
        f"  T5 config: {tmp_path / RELEASE_T5_FOLDER / 'config.json'}\n"
        f"  Q-Former (bert) config: {tmp_path / RELEASE_BERT_FOLDER / 'config.json'}\n"
        f"  VAE config: {tmp_path / RELEASE_VAE_FOLDER / 'config.json'}\n"
        "download them with: hf download EurekaTian/MIGE --include model.pth --include 't5-v1_1-xxl/*.json' "
        "--include t5-v1_1-xxl/spiece.model --include bert-base-uncased/config.json --include 'sd-vae-ft-ema/*' "
        f"--local-dir {tmp_path}\n"
    )


def _truncated_checkpoint() -> bytes:
    buffer = io.BytesIO()
    torch.save({"state_dict": {"t5_proj.bias": torch.zeros(8)}}, buffer)
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


@pytest.mark.parametrize(
    "content",
    [b"", bytes(range(256)) * 4, _truncated_checkpoint()],
    ids=["empty", "random_bytes", "truncated_zip"],
)
def test_a_damaged_checkpoint_is_one_line_asking_to_download_it_again(
    tiny, tmp_path: Path, capsys, content: bytes
) -> None:
    from mige_bench import cli

    release = tmp_path / "release"
    write_tiny_release(tiny, release, original_state_dict(tiny))
    (release / RELEASE_CHECKPOINT).write_bytes(content)
    assert cli.main(["convert-mige", "--release", str(release), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == (
        f"error: {release / RELEASE_CHECKPOINT} ({len(content):,} bytes) is not a readable PyTorch checkpoint, e.g. "
        "an interrupted download: delete it and download it again.\n"
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("folder", "text", "problem"),
    [
        (
            RELEASE_T5_FOLDER,
            json.dumps({"d_kv": 8}),
            "has no 'd_model', which the conversion needs: download it again.",
        ),
        (
            RELEASE_BERT_FOLDER,
            json.dumps({"num_hidden_layers": 2}),
            "has no 'hidden_size', which the conversion needs: download it again.",
        ),
        (
            RELEASE_T5_FOLDER,
            "",
            "is not valid JSON (Expecting value: line 1 column 1 (char 0)): delete it and download it again.",
        ),
    ],
    ids=["t5_without_d_model", "bert_without_hidden_size", "empty_t5_config"],
)
def test_an_incomplete_config_is_one_line_naming_the_file(
    tiny, tmp_path: Path, capsys, folder: str, text: str, problem: str
) -> None:
    from mige_bench import cli

    release = tmp_path / "release"
    write_tiny_release(tiny, release, original_state_dict(tiny))
    (release / folder / "config.json").write_text(text)
    assert cli.main(["convert-mige", "--release", str(release), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == f"error: {release / folder / 'config.json'} {problem}\n"
    assert not (tmp_path / "out").exists()
