"""MIGE's multimodal encoder: reference images + ``<imagehere>`` prompt → T5 encoder states that condition the DiT.

Re-implements, module by module, the conditioning half of ``MIGE`` (``Eureka-Maggie/MIGE`` @ ``9808b79``,
``diffusion/model/nets/MIGE_model.py``; contract: ``MIGE_SPEC.md`` §1.1-§1.8, §1.11, §6.1-§6.3)::

    reference pixels [B,R,3,224,224] ─ EVA ViT-g ─ ln_vision ─ Q-Former ─┐
                                                                         FFM ─ t5_proj ─┐
    reference tokens [B,R,N,C] (DiT x_embedder of the reference latents) ┘              │
    prompt segments (token ids per <imagehere> split) ──── T5 token embeddings ─────────┴─ splice ─ T5 encoder

The original recomputes all of this at every denoising step (and runs the vision tower on every zero-padded
reference slot). :meth:`MIGEMultimodalEncoder.forward` computes it once per sample; with
``skip_unused_references`` it runs the vision tower only on the reference slots that a marker actually reads.

transformers parts are used where they compute the same thing as the original (``Blip2QFormerModel``, ``T5Stack``,
both forced to eager attention); the EVA ViT is written here because ``Blip2VisionModel`` scales the attention scores
instead of ``q`` and shares one LayerNorm eps with ``ln_vision``, which changes fp16 rounding.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn
from transformers import Blip2QFormerConfig, Blip2QFormerModel, T5Config
from transformers.models.t5.modeling_t5 import T5Stack

from reference_model.original_keys import remap_original_state_dict

logger = logging.getLogger(__name__)

# Named sizes; the keys double as CLI choices. "MIGE_XL_2" is the released model (EVA ViT-g/14 as BLIP-2 builds it,
# bert-base Q-Former, T5-v1.1-XXL encoder, PixArt-XL/2 patch tokens) = the constructor defaults; "tiny" is a random
# CPU-sized model for smoke runs and tests (pair it with a DiT of hidden_size 32 and caption_channels 32).
MULTIMODAL_ENCODER_SIZES: dict[str, dict[str, int]] = {
    "MIGE_XL_2": {},
    "tiny": {
        "vision_hidden_size": 32,
        "vision_num_layers": 2,
        "vision_num_heads": 2,
        "vision_intermediate_size": 64,
        "num_query_tokens": 8,
        "qformer_hidden_size": 32,
        "qformer_num_layers": 2,
        "qformer_num_heads": 4,
        "qformer_intermediate_size": 64,
        "reference_token_dim": 32,
        "ffm_num_heads": 4,
        "t5_d_model": 32,
        "t5_d_kv": 8,
        "t5_num_heads": 4,
        "t5_d_ff": 64,
        "t5_num_layers": 2,
        "t5_vocab_size": 2112,
    },
}


class MultimodalConditioning(NamedTuple):
    """What the DiT cross-attends to: T5 states and the 0/1 mask of the spliced sequence."""

    hidden_states: torch.Tensor  # [B, max_length, t5_d_model]
    attention_mask: torch.Tensor  # [B, max_length] int64, 1 = real position


# --------------------------------------------------------------------------------------------------------------------
#                                         EVA ViT-g (lavis/models/eva_vit.py)
# --------------------------------------------------------------------------------------------------------------------


class EVAAttention(nn.Module):
    """EVA self-attention: bias-less ``qkv`` plus learned ``q_bias``/``v_bias`` (no key bias), ``q`` scaled first."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        qkv_bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, qkv_bias)  # [M, T, 3D]
        qkv = qkv.reshape(batch, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)  # [3, M, H, T, d]
        q, k, v = qkv[0], qkv[1], qkv[2]
        # Scaling q before the product (not the scores after it) is EVA's op order; it matters in fp16.
        attn = (q * self.scale) @ k.transpose(-2, -1)  # [M, H, T, T]
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(batch, length, -1)  # [M, T, D]
        return self.proj(x)


class EVAMlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()  # exact erf GELU
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class EVABlock(nn.Module):
    """Pre-LN transformer block; no layer-scale, no relative position bias, no drop-path (BLIP-2's EVA ViT-g)."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = EVAAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = EVAMlp(dim, mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class EVAVisionTransformer(nn.Module):
    """EVA ViT-g/14 as BLIP-2 builds it: output of the last block for all tokens, no final norm, no pooling.

    Parameter names follow the original ``VisionTransformer`` (only ``patch_embed.proj`` is flattened to
    ``patch_embed``), so the checkpoint maps by prefix.
    """

    def __init__(
        self, image_size: int, patch_size: int, dim: int, depth: int, num_heads: int, mlp_dim: int, eps: float
    ) -> None:
        super().__init__()
        num_patches = (image_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, dim))
        self.blocks = nn.ModuleList(EVABlock(dim, num_heads, mlp_dim, eps) for _ in range(depth))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixels).flatten(2).transpose(1, 2)  # [M, P, D], P = (224/14)^2 = 256
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)  # [M, P+1, D]
        x = x + self.pos_embed  # [M, P+1, D]
        for block in self.blocks:
            x = block(x)  # [M, P+1, D]
        return x


class Float32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 whatever the weight/input dtype, returned in the input dtype (BLIP-2's)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


# --------------------------------------------------------------------------------------------------------------------
#                                   FFM: fuse Q-Former queries with VAE patch tokens
# --------------------------------------------------------------------------------------------------------------------


class FeatureFusionModule(nn.Module):
    """MIGE's FFM (``diffusion/model/nets/FFM_module.py``): queries attend to the reference's VAE patch tokens.

    ``out = LN_out(mlp(MHA(LN_q(W_q·clip), LN_k(k_proj(vae)), LN_v(v_proj(vae)))) + clip)``.
    """

    def __init__(self, dim: int, reference_token_dim: int, num_heads: int, eps: float) -> None:
        super().__init__()
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Sequential(nn.Linear(reference_token_dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.v_proj = nn.Sequential(nn.Linear(reference_token_dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.ln_q = nn.LayerNorm(dim, eps=eps)
        self.ln_k = nn.LayerNorm(dim, eps=eps)
        self.ln_v = nn.LayerNorm(dim, eps=eps)
        self.attention = nn.MultiheadAttention(dim, num_heads)  # sequence-first, as in the original
        self.mlp = nn.Linear(dim, dim)
        self.ln_out = nn.LayerNorm(dim, eps=eps)

    def forward(self, queries: torch.Tensor, reference_tokens: torch.Tensor) -> torch.Tensor:
        q = self.ln_q(self.q_proj(queries)).transpose(0, 1)  # [Q, M, D]
        k = self.ln_k(self.k_proj(reference_tokens)).transpose(0, 1)  # [N, M, D]
        v = self.ln_v(self.v_proj(reference_tokens)).transpose(0, 1)  # [N, M, D]
        fused = self.attention(q, k, v)[0].transpose(0, 1)  # [M, Q, D]
        return self.ln_out(self.mlp(fused) + queries)  # [M, Q, D]


# --------------------------------------------------------------------------------------------------------------------
#                                              The multimodal encoder
# --------------------------------------------------------------------------------------------------------------------


class MIGEMultimodalEncoder(ModelMixin, ConfigMixin):
    """Everything that turns MIGE's multimodal instruction into the DiT's cross-attention context.

    Defaults are the released model's sizes (see :data:`MULTIMODAL_ENCODER_SIZES`); every dimension is a config key.

    Args:
        vision_image_size: ViT input resolution (224).
        vision_patch_size: ViT patch size (14).
        vision_hidden_size: EVA width (1408).
        vision_num_layers: EVA depth (39: BLIP-2 drops EVA-CLIP-g's last block).
        vision_num_heads: EVA heads (16).
        vision_intermediate_size: EVA MLP width (``int(1408 * 4.3637)`` = 6144).
        vision_layer_norm_eps: EVA block LayerNorm eps (1e-6).
        ln_vision_eps: eps of ``ln_vision`` after the ViT (1e-5, the torch default).
        num_query_tokens: Q-Former queries per image (32).
        qformer_hidden_size: Q-Former width (768, bert-base).
        qformer_num_layers: Q-Former depth (12).
        qformer_num_heads: Q-Former heads (12).
        qformer_intermediate_size: Q-Former query-FFN width (3072).
        qformer_cross_attention_frequency: cross-attention in every n-th layer, starting at 0 (2).
        qformer_layer_norm_eps: Q-Former LayerNorm eps (1e-12).
        reference_token_dim: width of the reference tokens fed to FFM = DiT hidden size (1152).
        ffm_num_heads: FFM attention heads (8).
        ffm_layer_norm_eps: FFM LayerNorm eps (1e-6).
        t5_d_model: T5 width (4096).
        t5_d_kv: T5 head dim (64).
        t5_num_heads: T5 heads (64).
        t5_d_ff: T5 gated-FFN width (10240).
        t5_num_layers: T5 encoder depth (24).
        t5_vocab_size: T5 embedding rows (32128).
        t5_relative_attention_num_buckets: relative position buckets (32).
        t5_relative_attention_max_distance: relative position max distance (128).
        t5_feed_forward_proj: T5 FFN type ("gated-gelu" = tanh GELU gate).
        t5_layer_norm_epsilon: T5 RMSNorm eps (1e-6).
        max_references: reference slots per sample (4).
        max_length: spliced sequence length (256): shorter is padded, longer is truncated.
        eos_token_id: T5 EOS, appended to the last text segment (1).
        pad_token_id: T5 pad; its embedding fills the sequence up to ``max_length`` (0).
    """

    @register_to_config
    def __init__(
        self,
        vision_image_size: int = 224,
        vision_patch_size: int = 14,
        vision_hidden_size: int = 1408,
        vision_num_layers: int = 39,
        vision_num_heads: int = 16,
        vision_intermediate_size: int = 6144,
        vision_layer_norm_eps: float = 1e-6,
        ln_vision_eps: float = 1e-5,
        num_query_tokens: int = 32,
        qformer_hidden_size: int = 768,
        qformer_num_layers: int = 12,
        qformer_num_heads: int = 12,
        qformer_intermediate_size: int = 3072,
        qformer_cross_attention_frequency: int = 2,
        qformer_layer_norm_eps: float = 1e-12,
        reference_token_dim: int = 1152,
        ffm_num_heads: int = 8,
        ffm_layer_norm_eps: float = 1e-6,
        t5_d_model: int = 4096,
        t5_d_kv: int = 64,
        t5_num_heads: int = 64,
        t5_d_ff: int = 10240,
        t5_num_layers: int = 24,
        t5_vocab_size: int = 32128,
        t5_relative_attention_num_buckets: int = 32,
        t5_relative_attention_max_distance: int = 128,
        t5_feed_forward_proj: str = "gated-gelu",
        t5_layer_norm_epsilon: float = 1e-6,
        max_references: int = 4,
        max_length: int = 256,
        eos_token_id: int = 1,
        pad_token_id: int = 0,
    ) -> None:
        super().__init__()
        # Inference-only module: every dropout rate is 0, so train()/eval() cannot change the output.
        self.vision_encoder = EVAVisionTransformer(
            vision_image_size,
            vision_patch_size,
            vision_hidden_size,
            vision_num_layers,
            vision_num_heads,
            vision_intermediate_size,
            vision_layer_norm_eps,
        )
        self.ln_vision = Float32LayerNorm(vision_hidden_size, eps=ln_vision_eps)
        self.query_tokens = nn.Parameter(torch.zeros(1, num_query_tokens, qformer_hidden_size))
        qformer_config = Blip2QFormerConfig(
            hidden_size=qformer_hidden_size,
            num_hidden_layers=qformer_num_layers,
            num_attention_heads=qformer_num_heads,
            intermediate_size=qformer_intermediate_size,
            hidden_act="gelu",
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            layer_norm_eps=qformer_layer_norm_eps,
            cross_attention_frequency=qformer_cross_attention_frequency,
            encoder_hidden_size=vision_hidden_size,
            use_qformer_text_input=False,
        )
        qformer_config._attn_implementation = "eager"  # the original's op order (scores, mask, softmax, · V)
        self.qformer = Blip2QFormerModel(qformer_config)
        self.ffm = FeatureFusionModule(qformer_hidden_size, reference_token_dim, ffm_num_heads, ffm_layer_norm_eps)
        self.t5_proj = nn.Linear(qformer_hidden_size, t5_d_model)
        t5_config = T5Config(
            d_model=t5_d_model,
            d_kv=t5_d_kv,
            num_heads=t5_num_heads,
            d_ff=t5_d_ff,
            num_layers=t5_num_layers,
            vocab_size=t5_vocab_size,
            relative_attention_num_buckets=t5_relative_attention_num_buckets,
            relative_attention_max_distance=t5_relative_attention_max_distance,
            feed_forward_proj=t5_feed_forward_proj,
            layer_norm_epsilon=t5_layer_norm_epsilon,
            dropout_rate=0.0,
            is_decoder=False,
            is_encoder_decoder=False,
            use_cache=False,
            pad_token_id=pad_token_id,
            eos_token_id=eos_token_id,
        )
        t5_config._attn_implementation = "eager"
        # T5Stack rather than T5EncoderModel: the latter ties `shared` and `encoder.embed_tokens`, and safetensors
        # refuses to save a tensor under two names.
        self.text_encoder = T5Stack(t5_config)

    # ------------------------------------------------------------------ reference images → T5-width query blocks

    def _vision_precision(self, device: torch.device) -> contextlib.AbstractContextManager:
        """The original runs ViT + ln_vision under CUDA fp16 autocast (``maybe_autocast``) with bf16 weights.

        Reproduced on CUDA whenever the weights are half precision: fp16 matmuls, fp32 LayerNorm/softmax and an fp32
        residual stream. fp32 weights run in plain fp32 (the CPU golden fixtures' regime).
        """
        if device.type == "cuda" and self.dtype in (torch.float16, torch.bfloat16):
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def embed_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """EVA ViT + ``ln_vision``: ``[M, 3, 224, 224]`` → image embeddings ``[M, 257, vision_hidden_size]``."""
        # The scripts round the pixels to the model dtype before the ViT (spec §7.2).
        pixels = pixels.to(device=self.device, dtype=self.dtype)
        with self._vision_precision(pixels.device):
            features = self.vision_encoder(pixels)  # [M, 257, Dv]
            features = self.ln_vision(features.float())  # [M, 257, Dv] fp32
        return features.to(self.dtype)

    def query_images(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """Q-Former query path: ``[M, 257, Dv]`` → ``[M, num_query_tokens, qformer_hidden_size]``."""
        queries = self.query_tokens.expand(image_embeds.shape[0], -1, -1)  # [M, Q, Dq]
        return self.qformer(query_embeds=queries, encoder_hidden_states=image_embeds).last_hidden_state

    def encode_references(self, pixels: torch.Tensor, reference_tokens: torch.Tensor) -> torch.Tensor:
        """ViT → ln_vision → Q-Former → FFM → t5_proj for a flat batch of reference slots.

        Args:
            pixels: ``[M, 3, 224, 224]`` BLIP-normalised images (all-zero for a padded slot).
            reference_tokens: ``[M, N, reference_token_dim]``: the DiT ``x_embedder`` applied to
                ``cat([vae_latent, zeros])`` of each reference (no positional embedding).

        Returns:
            ``[M, num_query_tokens, t5_d_model]`` image blocks to splice into the prompt.
        """
        queries = self.query_images(self.embed_images(pixels))  # [M, Q, Dq]
        fused = self.ffm(queries, reference_tokens.to(device=self.device, dtype=self.dtype))  # [M, Q, Dq]
        return self.t5_proj(fused)  # [M, Q, D]

    def _reference_blocks(
        self,
        num_markers: Sequence[int],
        reference_pixels: torch.Tensor,
        reference_tokens: torch.Tensor,
        skip_unused_references: bool,
    ) -> torch.Tensor:
        """Image blocks for every slot ``[B, R, Q, D]``; slots that no marker reads may be left at zero."""
        batch, slots = reference_pixels.shape[:2]
        blocks = torch.zeros(
            batch,
            slots,
            self.config.num_query_tokens,
            self.config.t5_d_model,
            device=self.device,
            dtype=self.dtype,
        )
        # The original skips the whole branch (blocks stay zero) only when every slot of the batch is an all-zero
        # image (MIGE_model.py:238-263); otherwise padded slots are encoded like images.
        if not bool(reference_pixels.ne(0).any()):
            return blocks
        if not skip_unused_references:
            flat = self.encode_references(reference_pixels.flatten(0, 1), reference_tokens.flatten(0, 1))
            return flat.view(batch, slots, *flat.shape[1:])
        # Slot j of sample b is spliced iff j < min(markers_b, R). Each slot is encoded independently of the others
        # (per-image attention and norms), so encoding only those slots leaves every spliced block unchanged.
        used = torch.zeros(batch, slots, dtype=torch.bool)
        for b, markers in enumerate(num_markers):
            used[b, : min(markers, slots)] = True
        if used.any():
            encoded = self.encode_references(
                reference_pixels[used.to(reference_pixels.device)], reference_tokens[used.to(reference_tokens.device)]
            )  # [U, Q, D]
            blocks[used.to(blocks.device)] = encoded
        return blocks

    # ------------------------------------------------------------------ prompt splicing (get_context_emb)

    def splice_prompt(
        self, prompt_segment_ids: Sequence[Sequence[Sequence[int]]], reference_blocks: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Interleave text-segment embeddings with image blocks exactly like ``MIGE.get_context_emb``.

        For each sample: EOS is appended to the last segment only; segment ``i`` is followed by image block ``i`` for
        ``i < min(markers, R)`` (Python ``zip``: with more than ``R`` markers the segments between the ``R``-th marker
        and the last one are dropped), then the last segment. Shorter sequences are right-padded with the embedding
        of token ``pad_token_id``; longer ones are cut at ``max_length`` with an all-ones mask (EOS lost).

        Args:
            prompt_segment_ids: Per sample, the token ids of each ``<imagehere>``-separated segment (no EOS).
            reference_blocks: ``[B, R, Q, t5_d_model]`` image blocks, slot ``j`` for marker ``j``.

        Returns:
            ``inputs_embeds [B, max_length, t5_d_model]`` and ``attention_mask [B, max_length]`` (int64).
        """
        embed_tokens = self.text_encoder.embed_tokens
        max_length = self.config.max_length
        device = embed_tokens.weight.device
        pad_embed = embed_tokens(torch.tensor([self.config.pad_token_id], device=device))  # [1, D]
        sequences, masks = [], []
        for segments, blocks in zip(prompt_segment_ids, reference_blocks, strict=True):
            segment_ids = [list(segment) for segment in segments]
            segment_ids[-1].append(self.config.eos_token_id)
            all_ids = torch.tensor([i for ids in segment_ids for i in ids], dtype=torch.long, device=device)
            text = embed_tokens(all_ids).split([len(ids) for ids in segment_ids])  # each [len_i, D]
            # zip stops at the shorter side: that is the original's "at most R images, extra segments dropped".
            pairs = zip(text[:-1], blocks.to(pad_embed.dtype), strict=False)
            pieces = [piece for pair in pairs for piece in pair]
            sequence = torch.cat([*pieces, text[-1]])  # [L, D]
            length = sequence.shape[0]
            mask = torch.zeros(max_length, dtype=torch.long, device=device)
            mask[: min(length, max_length)] = 1
            if length < max_length:
                sequence = torch.cat([sequence, pad_embed.expand(max_length - length, -1)])
            sequences.append(sequence[:max_length])
            masks.append(mask)
        return torch.stack(sequences), torch.stack(masks)  # [B, max_length, D], [B, max_length]

    # ------------------------------------------------------------------ the whole conditioning

    def encode_text(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """T5 encoder on the spliced (padded, full-length) sequence: ``[B, L, D]`` → ``[B, L, D]``."""
        return self.text_encoder(inputs_embeds=inputs_embeds, attention_mask=attention_mask).last_hidden_state

    def forward(
        self,
        prompt_segment_ids: Sequence[Sequence[Sequence[int]]],
        reference_pixels: torch.Tensor,
        reference_tokens: torch.Tensor,
        skip_unused_references: bool = True,
    ) -> MultimodalConditioning:
        """Encode a batch of multimodal instructions once (not once per denoising step, as the original did).

        Args:
            prompt_segment_ids: ``B`` prompts, each the token ids of its ``<imagehere>``-separated segments
                (``SegmentTokenizer`` output; no EOS).
            reference_pixels: ``[B, R, 3, 224, 224]`` BLIP-normalised references, zero-padded to ``R`` slots.
            reference_tokens: ``[B, R, N, reference_token_dim]`` DiT ``x_embedder`` tokens of
                ``cat([vae_latent, zeros])`` per slot (padded slots: the latent is zero).
            skip_unused_references: Run ViT/Q-Former/FFM only on slots that a marker reads. Output-identical: a
                block never spliced cannot matter, and a padded slot that a marker does read is still encoded.

        Returns:
            T5 states ``[B, max_length, t5_d_model]`` and the int64 mask ``[B, max_length]``.
        """
        num_markers = [len(segments) - 1 for segments in prompt_segment_ids]
        blocks = self._reference_blocks(num_markers, reference_pixels, reference_tokens, skip_unused_references)
        inputs_embeds, attention_mask = self.splice_prompt(prompt_segment_ids, blocks)
        return MultimodalConditioning(self.encode_text(inputs_embeds, attention_mask), attention_mask)

    def encode(
        self,
        prompt_segment_ids: Sequence[Sequence[Sequence[int]]],
        reference_pixels: torch.Tensor,
        reference_tokens: torch.Tensor,
        skip_unused_references: bool = True,
    ) -> MultimodalConditioning:
        """Alias of calling the module (which keeps offload hooks on ``forward`` working); see :meth:`forward`."""
        return self(prompt_segment_ids, reference_pixels, reference_tokens, skip_unused_references)

    # ------------------------------------------------------------------ configs and weights of the original

    @staticmethod
    def config_from_original(
        t5_config: Mapping,
        qformer_bert_config: Mapping,
        vision_hidden_size: int = 1408,
        vision_num_layers: int = 39,
        vision_num_heads: int = 16,
        vision_mlp_ratio: float = 4.3637,
        reference_token_dim: int = 1152,
        ffm_num_heads: int = 8,
        num_query_tokens: int = 32,
        cross_attention_frequency: int = 2,
        max_length: int = 256,
    ) -> dict:
        """Constructor kwargs from the configs the original reads (T5 and bert-base ``config.json``).

        Args:
            t5_config: ``t5-v1_1-xxl/config.json`` contents.
            qformer_bert_config: ``bert-base-uncased/config.json`` contents.
            vision_hidden_size: EVA ``embed_dim``.
            vision_num_layers: EVA ``depth``.
            vision_num_heads: EVA ``num_heads``.
            vision_mlp_ratio: EVA ``mlp_ratio``; the MLP width is ``int(hidden * ratio)`` as in EVA.
            reference_token_dim: DiT hidden size.
            ffm_num_heads: FFM heads.
            num_query_tokens: Q-Former queries.
            cross_attention_frequency: Q-Former ``cross_attention_freq``.
            max_length: ``model_max_length`` of the spliced sequence.

        Returns:
            Keyword arguments for :class:`MIGEMultimodalEncoder`.
        """
        return {
            "vision_hidden_size": vision_hidden_size,
            "vision_num_layers": vision_num_layers,
            "vision_num_heads": vision_num_heads,
            "vision_intermediate_size": int(vision_hidden_size * vision_mlp_ratio),
            "num_query_tokens": num_query_tokens,
            "qformer_hidden_size": qformer_bert_config["hidden_size"],
            "qformer_num_layers": qformer_bert_config["num_hidden_layers"],
            "qformer_num_heads": qformer_bert_config["num_attention_heads"],
            "qformer_intermediate_size": qformer_bert_config["intermediate_size"],
            "qformer_cross_attention_frequency": cross_attention_frequency,
            "qformer_layer_norm_eps": qformer_bert_config.get("layer_norm_eps", 1e-12),
            "reference_token_dim": reference_token_dim,
            "ffm_num_heads": ffm_num_heads,
            "t5_d_model": t5_config["d_model"],
            "t5_d_kv": t5_config["d_kv"],
            "t5_num_heads": t5_config["num_heads"],
            "t5_d_ff": t5_config["d_ff"],
            "t5_num_layers": t5_config["num_layers"],
            "t5_vocab_size": t5_config["vocab_size"],
            "t5_relative_attention_num_buckets": t5_config.get("relative_attention_num_buckets", 32),
            "t5_relative_attention_max_distance": t5_config.get("relative_attention_max_distance", 128),
            "t5_feed_forward_proj": t5_config.get("feed_forward_proj", "gated-gelu"),
            "t5_layer_norm_epsilon": t5_config.get("layer_norm_epsilon", 1e-6),
            "max_length": max_length,
            "eos_token_id": t5_config.get("eos_token_id", 1),
            "pad_token_id": t5_config.get("pad_token_id", 0),
        }

    def load_original_state_dict(self, original_state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load the encoder's share of an original ``MIGE.state_dict()`` strictly (DiT keys are ignored).

        Raises:
            ValueError: see :func:`convert_original_encoder_state_dict`.
        """
        self.load_state_dict(convert_original_encoder_state_dict(original_state_dict, self), strict=True)


# --------------------------------------------------------------------------------------------------------------------
#                                         Original checkpoint keys → these keys
# --------------------------------------------------------------------------------------------------------------------

# Top-level names of the original ``MIGE`` state dict that belong to the encoder (everything else is the DiT's).
ORIGINAL_ENCODER_MODULES = frozenset(
    {"visual_encoder", "ln_vision", "query_tokens", "Qformer", "FFM", "t5_proj", "t5_model"}
)

# Original keys that carry nothing this module needs.
_UNUSED_ORIGINAL_KEYS = frozenset(
    {
        "Qformer.bert.embeddings.position_ids",  # registered buffer, never read on the query-only path
        "t5_model.shared.weight",  # tied alias of t5_model.encoder.embed_tokens.weight (checked equal)
    }
)

# Each rule maps one family of original keys (full match) to a key of MIGEMultimodalEncoder.
_ORIGINAL_KEY_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"visual_encoder\.patch_embed\.proj\.(weight|bias)", r"vision_encoder.patch_embed.\1"),
        (r"visual_encoder\.(cls_token|pos_embed)", r"vision_encoder.\1"),
        (
            r"visual_encoder\.blocks\.(\d+)\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)",
            r"vision_encoder.blocks.\1.\2.\3",
        ),
        (r"visual_encoder\.blocks\.(\d+)\.attn\.(q_bias|v_bias)", r"vision_encoder.blocks.\1.attn.\2"),
        (r"ln_vision\.(weight|bias)", r"ln_vision.\1"),
        (r"query_tokens", "query_tokens"),
        (r"Qformer\.bert\.embeddings\.LayerNorm\.(weight|bias)", r"qformer.layernorm.\1"),
        (
            r"Qformer\.bert\.encoder\.layer\.(\d+)\.(attention|crossattention)\.self\.(query|key|value)\.(weight|bias)",
            r"qformer.encoder.layer.\1.\2.attention.\3.\4",
        ),
        (
            r"Qformer\.bert\.encoder\.layer\.(\d+)\.(attention|crossattention)\.output\.(dense|LayerNorm)\.(weight|bias)",
            r"qformer.encoder.layer.\1.\2.output.\3.\4",
        ),
        (
            r"Qformer\.bert\.encoder\.layer\.(\d+)\.(intermediate_query\.dense|output_query\.dense|output_query\.LayerNorm)"
            r"\.(weight|bias)",
            r"qformer.encoder.layer.\1.\2.\3",
        ),
        (r"FFM\.q_proj_1\.weight", "ffm.q_proj.weight"),
        (r"FFM\.(k|v)_proj_1\.(0|2)\.(weight|bias)", r"ffm.\1_proj.\2.\3"),
        (r"FFM\.ln_(q|k|v)_1\.(weight|bias)", r"ffm.ln_\1.\2"),
        (r"FFM\.clip_attn\.(in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)", r"ffm.attention.\1"),
        (r"FFM\.(mlp|ln_out)\.(weight|bias)", r"ffm.\1.\2"),
        (r"t5_proj\.(weight|bias)", r"t5_proj.\1"),
        (r"t5_model\.encoder\.(.+)", r"text_encoder.\1"),
    )
)


def is_original_encoder_key(key: str) -> bool:
    """Whether an original ``MIGE`` state-dict key belongs to the multimodal encoder rather than the DiT."""
    return key.split(".", 1)[0] in ORIGINAL_ENCODER_MODULES


def map_original_encoder_key(key: str) -> str | None:
    """Translate one original encoder key; ``None`` for the two keys this module does not need.

    Raises:
        KeyError: ``key`` matches no known encoder key family.
    """
    if key in _UNUSED_ORIGINAL_KEYS:
        return None
    for pattern, replacement in _ORIGINAL_KEY_RULES:
        if pattern.fullmatch(key):
            return pattern.sub(replacement, key)
    raise KeyError(f"unmapped original multimodal-encoder key: {key!r}")


def convert_original_encoder_state_dict(
    original_state_dict: Mapping[str, torch.Tensor], encoder: MIGEMultimodalEncoder
) -> dict[str, torch.Tensor]:
    """Map the encoder part of an original ``MIGE`` state dict onto ``encoder``'s keys, strictly.

    DiT keys (see :func:`is_original_encoder_key`) are ignored, so the whole original state dict may be passed.
    Every encoder key must map (``Qformer.bert.embeddings.position_ids`` is dropped as unused; the tied
    ``t5_model.shared.weight`` must equal ``t5_model.encoder.embed_tokens.weight`` and is dropped), every key of
    ``encoder.state_dict()`` must be produced and every shape must match; otherwise this raises listing all
    offenders. Tensors are returned as given (no dtype change).

    Args:
        original_state_dict: Original ``MIGE.state_dict()`` (or ``model.pth['state_dict']``).
        encoder: The target model; may live on the ``meta`` device (only key names and shapes are read).

    Returns:
        State dict for ``encoder.load_state_dict(..., strict=True)``.

    Raises:
        ValueError: Unmapped, duplicate, missing, untied or wrongly shaped keys.
    """
    return remap_original_state_dict(
        original_state_dict,
        encoder.state_dict(),
        belongs=is_original_encoder_key,
        rename=map_original_encoder_key,
        part="multimodal-encoder",
        problems=_tied_t5_embedding_problems(original_state_dict),
    )


def _tied_t5_embedding_problems(original_state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """The original stores the tied T5 embedding under two names; both must be there and hold the same values."""
    shared = original_state_dict.get("t5_model.shared.weight")
    embed = original_state_dict.get("t5_model.encoder.embed_tokens.weight")
    if shared is None or embed is None:
        return ["t5_model.shared.weight and t5_model.encoder.embed_tokens.weight (tied) must both be present"]
    comparable = not shared.is_meta and not embed.is_meta
    if shared.shape != embed.shape or (comparable and not torch.equal(shared, embed)):
        return ["t5_model.shared.weight differs from t5_model.encoder.embed_tokens.weight; they must be tied"]
    return []
