"""Tiny, randomly initialised diffusers pipelines of the real classes, saved to disk as a user's download would be.

Each fixture builds the components from configs (1-2 layers, a handful of channels, an in-process tokenizer, since
nothing may be downloaded), saves the pipeline with ``save_pretrained`` and returns the folder; the tests then load
it back through the adapter's own ``from_pretrained`` path.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderKLQwenImage,
    BlipDiffusionPipeline,
    EulerAncestralDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxKontextPipeline,
    FluxTransformer2DModel,
    OmniGenPipeline,
    OmniGenTransformer2DModel,
    PNDMScheduler,
    QwenImageEditPipeline,
    QwenImageEditPlusPipeline,
    QwenImageTransformer2DModel,
    StableDiffusionInstructPix2PixPipeline,
    UNet2DConditionModel,
)
from diffusers.pipelines.deprecated.blip_diffusion import Blip2QFormerModel, BlipImageProcessor, ContextCLIPTextModel
from tokenizers.pre_tokenizers import ByteLevel
from transformers import (
    BertTokenizer,
    Blip2Config,
    Blip2QFormerConfig,
    Blip2VisionConfig,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    LlamaTokenizer,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Tokenizer,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

LETTERS = "abcdefghijklmnopqrstuvwxyz"


@pytest.fixture
def record_call_sizes(monkeypatch: pytest.MonkeyPatch):
    """``record(generator)``: a list that fills with the batch size of every pipeline call the generator makes."""

    def record(generator) -> list[int]:
        sizes: list[int] = []
        run_family = generator.family.call
        monkeypatch.setattr(
            generator.family,
            "call",
            lambda pipe, batch, *rest: sizes.append(len(batch)) or run_family(pipe, batch, *rest),
        )
        return sizes

    return record


def tiny_clip_tokenizer() -> CLIPTokenizer:
    """A character-level CLIP BPE tokenizer (no merges): every lower-case letter, alone or word-final."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for letter in LETTERS:
        vocab[letter] = len(vocab)
        vocab[f"{letter}</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def tiny_llama_tokenizer() -> LlamaTokenizer:
    """A character-level Llama tokenizer covering the characters of OmniGen's prompt template and image tags."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for character in f"▁{LETTERS}<>|_0123456789\n":
        vocab.setdefault(character, len(vocab))
    return LlamaTokenizer(vocab=vocab, merges=[])


def tiny_t5_tokenizer() -> T5Tokenizer:
    """A character-level T5 unigram tokenizer: the word-start marker and every lower-case letter."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(letter, -3.0) for letter in LETTERS]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def tiny_clip_text_config(tokenizer: CLIPTokenizer) -> CLIPTextConfig:
    """One CLIP text layer of width 16 (its pooled output is 16-dimensional too)."""
    return CLIPTextConfig(
        vocab_size=len(tokenizer.get_vocab()),
        hidden_size=16,
        intermediate_size=16,
        num_attention_heads=2,
        num_hidden_layers=1,
        projection_dim=16,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )


def tiny_clip_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    return CLIPTextModel(tiny_clip_text_config(tokenizer))


def tiny_bert_tokenizer_dir(folder: Path) -> Path:
    """A character-level BERT tokenizer saved to ``folder``: BLIP-Diffusion's Q-Former loads its tokenizer by path
    (``bert-base-uncased`` from the hub unless its config names another)."""
    folder.mkdir(parents=True, exist_ok=True)
    vocabulary = folder / "vocab.txt"
    vocabulary.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *LETTERS]) + "\n", encoding="utf-8")
    BertTokenizer(vocab_file=str(vocabulary)).save_pretrained(folder)
    return folder


def tiny_vae(**config: object) -> AutoencoderKL:
    """Four blocks of four channels: the real 8x downsampling (OmniGen counts one token per 16x16 input pixels) at
    almost no cost. ``config`` adds to the AutoencoderKL config (FLUX's latent shift, for instance)."""
    return AutoencoderKL(
        block_out_channels=(4, 4, 4, 4),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=1,
        sample_size=32,
        **config,
    )


@pytest.fixture(scope="session")
def instruct_pix2pix_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    tokenizer = tiny_clip_tokenizer()
    text_encoder = tiny_clip_text_encoder(tokenizer)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=8,  # noisy latents + source-image latents
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        attention_head_dim=4,
        cross_attention_dim=16,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    )
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=tiny_vae(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=EulerAncestralDiscreteScheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    folder = tmp_path_factory.mktemp("instruct_pix2pix")
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def omnigen_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    tokenizer = tiny_llama_tokenizer()
    head_dim = 8
    transformer = OmniGenTransformer2DModel(
        in_channels=4,
        patch_size=2,
        hidden_size=16,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=16,
        num_layers=1,
        pad_token_id=2,
        vocab_size=len(tokenizer.get_vocab()),
        rope_scaling={"short_factor": [1.0] * (head_dim // 2), "long_factor": [1.0] * (head_dim // 2)},
        pos_embed_max_size=16,
        time_step_dim=16,
    )
    pipe = OmniGenPipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), vae=tiny_vae(), tokenizer=tokenizer
    )
    folder = tmp_path_factory.mktemp("omnigen")
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def flux_kontext_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    clip_tokenizer, t5_tokenizer = tiny_clip_tokenizer(), tiny_t5_tokenizer()
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=len(t5_tokenizer.get_vocab()),
            d_model=16,
            d_ff=16,
            d_kv=8,
            num_layers=1,
            num_heads=2,
            relative_attention_num_buckets=8,
            pad_token_id=0,
            eos_token_id=1,
        )
    )
    transformer = FluxTransformer2DModel(
        in_channels=16,  # 4 latent channels x a 2x2 patch
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=16,  # T5 width
        pooled_projection_dim=16,  # CLIP width
        guidance_embeds=True,  # as in FLUX.1 Kontext [dev], which is guidance-distilled
        axes_dims_rope=(2, 2, 4),
    )
    pipe = FluxKontextPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=tiny_vae(shift_factor=0.0609, scaling_factor=1.5035, use_quant_conv=False, use_post_quant_conv=False),
        text_encoder=tiny_clip_text_encoder(clip_tokenizer),
        tokenizer=clip_tokenizer,
        text_encoder_2=t5,
        tokenizer_2=t5_tokenizer,
        transformer=transformer,
    )
    folder = tmp_path_factory.mktemp("flux_kontext")
    pipe.save_pretrained(folder)
    return folder


QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


def tiny_qwen_processor() -> Qwen2VLProcessor:
    """A byte-level Qwen2 tokenizer without merges (one token per byte, so any prompt template tokenizes) plus
    Qwen2-VL image and video processors with 4 px patches, merged 2x2, capped at 32x32 px per image.

    The pipelines drop the first 64 tokens of their encoded template (the real tokenizer's length of the system
    prompt); with one token per byte the template is far longer, so part of the system prompt stays, as harmless here.
    """
    vocab = {character: index for index, character in enumerate(sorted(ByteLevel.alphabet()))}
    for token in QWEN_SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab, merges=[], unk_token=None, bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(QWEN_SPECIAL_TOKENS[1:])})
    patches = {"patch_size": 4, "merge_size": 2, "temporal_patch_size": 2}
    return Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=8 * 8, max_pixels=32 * 32, **patches),
        video_processor=Qwen2VLVideoProcessor(**patches),
        tokenizer=tokenizer,
    )


def tiny_qwen_edit_pipeline(pipeline_class: type) -> QwenImageEditPipeline | QwenImageEditPlusPipeline:
    """Qwen-Image-Edit's components at width 16: a one-layer Qwen2.5-VL (its image token ids taken from the tokenizer),
    a one-layer MMDiT and a 4-channel VAE with the real 8x downsampling."""
    processor = tiny_qwen_processor()
    vocab = processor.tokenizer.get_vocab()
    text_encoder = Qwen2_5_VLForConditionalGeneration(
        Qwen2_5_VLConfig(
            text_config={
                "vocab_size": len(vocab),
                "hidden_size": 16,
                "intermediate_size": 16,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "num_key_value_heads": 2,
                "bos_token_id": None,
                "eos_token_id": vocab["<|im_end|>"],
                "pad_token_id": vocab["<|endoftext|>"],
                "rope_parameters": {"rope_type": "default", "mrope_section": [1, 1, 2], "rope_theta": 1e6},
            },
            vision_config={
                "depth": 1,
                "hidden_size": 16,
                "intermediate_size": 16,
                "num_heads": 2,
                "out_hidden_size": 16,
                "patch_size": 4,
                "spatial_merge_size": 2,
                "temporal_patch_size": 2,
                "window_size": 16,
                "fullatt_block_indexes": [0],
            },
            image_token_id=vocab["<|image_pad|>"],
            video_token_id=vocab["<|video_pad|>"],
            vision_start_token_id=vocab["<|vision_start|>"],
            vision_end_token_id=vocab["<|vision_end|>"],
        )
    )
    vae = AutoencoderKLQwenImage(
        base_dim=4,
        z_dim=4,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=0,
        temperal_downsample=[False, False, False],
        latents_mean=[0.0] * 4,
        latents_std=[1.0] * 4,
    )
    transformer = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=16,  # 4 latent channels x a 2x2 patch
        out_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=16,  # Qwen2.5-VL width
        guidance_embeds=False,  # as in the released Qwen-Image-Edit checkpoints
        axes_dims_rope=(2, 2, 4),
    )
    return pipeline_class(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=processor.tokenizer,
        processor=processor,
        transformer=transformer,
    )


@pytest.fixture(scope="session")
def qwen_image_edit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("qwen_image_edit")
    tiny_qwen_edit_pipeline(QwenImageEditPipeline).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def qwen_image_edit_plus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("qwen_image_edit_plus")
    tiny_qwen_edit_pipeline(QwenImageEditPlusPipeline).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def blip_diffusion_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built with diffusers' own component classes, as the hub checkpoint was; the adapter loads it with its
    transformers-5-compatible subclasses."""
    torch.manual_seed(0)
    tokenizer = tiny_clip_tokenizer()
    bert_dir = tiny_bert_tokenizer_dir(tmp_path_factory.mktemp("bert_tokenizer"))
    width = 16  # CLIP text, Q-Former and vision widths: the Q-Former's output replaces CLIP token embeddings
    qformer_config = Blip2Config(
        vision_config=Blip2VisionConfig(
            hidden_size=width,
            intermediate_size=width,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=16,
            patch_size=8,
        ).to_dict(),
        qformer_config=Blip2QFormerConfig(
            vocab_size=len(BertTokenizer.from_pretrained(bert_dir)) + 1,  # + the [DEC] token the Q-Former adds
            hidden_size=width,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=width,
            encoder_hidden_size=width,
            max_position_embeddings=32,
        ).to_dict(),
        num_query_tokens=4,
        tokenizer=str(bert_dir),
    )
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        attention_head_dim=4,
        cross_attention_dim=width,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    )
    # The pipeline derives the latent size from the UNet's depth (2x here), so the VAE must downsample 2x too.
    vae = AutoencoderKL(
        block_out_channels=(4, 4),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=1,
        sample_size=32,
    )
    pipe = BlipDiffusionPipeline(
        tokenizer=tokenizer,
        text_encoder=ContextCLIPTextModel(tiny_clip_text_config(tokenizer)),
        vae=vae,
        unet=unet,
        scheduler=PNDMScheduler(skip_prk_steps=True),
        qformer=Blip2QFormerModel(qformer_config),
        image_processor=BlipImageProcessor(size={"height": 16, "width": 16}),
        ctx_begin_pos=2,
        mean=[0.48145466, 0.4578275, 0.40821073],
        std=[0.26862954, 0.26130258, 0.27577711],
    )
    folder = tmp_path_factory.mktemp("blip_diffusion")
    pipe.save_pretrained(folder)
    return folder
