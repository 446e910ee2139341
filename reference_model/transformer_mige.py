"""The MIGE diffusion transformer: a PixArt-α style DiT whose input is noisy latent ‖ source latent.

Re-implements the DiT half of the original ``MIGE`` class (``Eureka-Maggie/MIGE``, ``MIGE_model.py`` and
``MIGE_blocks.py``; contract: ``MIGE_SPEC.md`` §1.4 and §1.9-1.11). The multimodal encoder (EVA ViT,
Q-Former, FFM, T5) lives elsewhere; this model starts from the T5 encoder output and its padding mask.

What it keeps from the original, on purpose:

* The network input is ``cat([x_t, source])`` (8 channels); ``x_embedder`` also embeds reference latents
  for the encoder's fusion module (:meth:`MIGETransformer2DModel.embed_reference_latents`).
* Inputs are cast to the model dtype *inside* ``forward``, including the timestep, so a bf16 model sees
  bf16-rounded timesteps (999 -> 1000) exactly like the original; an fp32 model is unaffected.
* ``null_caption`` (the original ``y_embedder.y_embedding``) is a persistent buffer: it is the
  unconditional caption for classifier-free guidance and can only come from the released checkpoint.

What differs: the original packs the valid caption tokens of all rows into one sequence and uses an
xformers block-diagonal mask; here every row keeps its padded caption and SDPA gets a key-padding mask.
Masked keys contribute exactly zero in both, so the results agree to floating-point reordering noise
(checked against the golden fixtures). The timestep sinusoid/MLP and the caption MLP are diffusers'
``Timesteps``/``TimestepEmbedding``/``PixArtAlphaTextProjection``, which compute the same operations in the same
order (the golden ``t_embed`` and ``y_embed`` match bit for bit); everything else is written out here.

Original key -> key here (see :func:`convert_original_transformer_state_dict`):

=======================================  =============================================
``x_embedder.proj.{weight,bias}``        ``x_embedder.proj.{weight,bias}``
``pos_embed``                            ``pos_embed`` (fixed 2-D sin-cos buffer)
``t_embedder.mlp.{0,2}.*``               ``t_embedder.linear_{1,2}.*``
``t_block.1.*``                          ``t_block.*`` (SiLU is applied in ``forward``)
``y_embedder.y_proj.fc{1,2}.*``          ``y_embedder.linear_{1,2}.*``
``y_embedder.y_embedding``               ``null_caption``
``blocks.{i}.attn.{qkv,proj}.*``         ``blocks.{i}.self_attn.{qkv,proj}.*``
``blocks.{i}.cross_attn.*``              ``blocks.{i}.cross_attn.*`` (``q_linear``, ``kv_linear``, ``proj``)
``blocks.{i}.mlp.fc{1,2}.*``             ``blocks.{i}.mlp.fc{1,2}.*``
``blocks.{i}.scale_shift_table``         ``blocks.{i}.scale_shift_table``
``final_layer.{scale_shift_table,linear.*}``  same
=======================================  =============================================
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import PixArtAlphaTextProjection, TimestepEmbedding, Timesteps
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from reference_model.original_keys import remap_original_state_dict

logger = logging.getLogger(__name__)

# Named model sizes; the keys double as CLI choices. Other arguments keep their (inference) defaults.
MIGE_TRANSFORMER_SIZES: dict[str, dict[str, int]] = {
    "MIGE_XL_2": {"depth": 28, "hidden_size": 1152, "patch_size": 2, "num_heads": 16},
}

# Width of the sinusoidal timestep features fed to ``t_embedder`` (fixed in the original TimestepEmbedder).
TIMESTEP_FREQUENCY_CHANNELS = 256
# LayerNorm epsilon of every DiT norm (norm1, norm2, final norm; all without affine parameters).
NORM_EPS = 1e-6


#################################################################################
#                         Embedding layers and helpers                          #
#################################################################################


def sincos_2d_position_embedding(
    hidden_size: int, grid_size: int, base_size: int, lewei_scale: float = 1.0
) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding of a square token grid (PixArt-α / MAE style).

    Token ``n = row * grid_size + col``. The first half of the channels encodes the *column*, the second
    half the row; each half is ``[sin(p * w_k)] ++ [cos(p * w_k)]`` with ``w_k = 10000^(-k / (D / 4))``
    and grid position ``p = index / (grid_size / base_size) / lewei_scale``. Computed in float64 and
    returned as float32, which reproduces the original's numpy float64 -> float32 buffer.

    Args:
        hidden_size: Embedding width (divisible by 4).
        grid_size: Tokens per side.
        base_size: Tokens per side at the training resolution (``input_size // patch_size``).
        lewei_scale: PixArt's position interpolation scale (1 at 512 px).

    Returns:
        Tensor of shape ``[grid_size * grid_size, hidden_size]``, float32.
    """
    if hidden_size % 4:
        raise ValueError(f"hidden_size must be divisible by 4 for a 2-D sin-cos embedding, got {hidden_size}")
    positions = torch.arange(grid_size, dtype=torch.float64) / (grid_size / base_size) / lewei_scale  # [G]
    quarter = hidden_size // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)  # [D/4]
    angles = positions[:, None] * omega[None]  # [G, D/4]
    axis_embedding = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)  # [G, D/2]
    column_part = axis_embedding[None, :, :].expand(grid_size, grid_size, -1)  # [row, col, D/2]
    row_part = axis_embedding[:, None, :].expand(grid_size, grid_size, -1)  # [row, col, D/2]
    return torch.cat([column_part, row_part], dim=-1).reshape(grid_size * grid_size, hidden_size).float()


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch_size`` convolution flattened to tokens (timm ``PatchEmbed``, no norm)."""

    def __init__(self, patch_size: int, in_channels: int, hidden_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size, bias=True)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """Map ``[N, C_in, H, W]`` latents to ``[N, H*W/p², hidden]`` tokens (row-major patch grid)."""
        return self.proj(latents).flatten(2).transpose(1, 2)  # [N, T, D]


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation ``x * (1 + scale) + shift``, in the original's operation order."""
    return x * (1 + scale) + shift


#################################################################################
#                                Attention layers                               #
#################################################################################


class SelfAttention(nn.Module):
    """Full multi-head self-attention over the image tokens with a fused ``qkv`` projection (SDPA kernel)."""

    def __init__(self, hidden_size: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=True)
        self.proj = nn.Linear(hidden_size, hidden_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend ``x`` ``[N, T, D]`` to itself; returns ``[N, T, D]``."""
        n, tokens, width = x.shape
        qkv = self.qkv(x).reshape(n, tokens, 3, self.num_heads, width // self.num_heads)  # [N, T, 3, H, d]
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x [N, H, T, d]
        out = F.scaled_dot_product_attention(q, k, v)  # [N, H, T, d]
        return self.proj(out.transpose(1, 2).reshape(n, tokens, width))  # [N, T, D]


class CrossAttention(nn.Module):
    """Image tokens attend to their own row's caption tokens; padded caption positions are masked out.

    The original packs all rows' valid caption tokens and uses a block-diagonal mask; a per-row
    key-padding mask is the same attention pattern.
    """

    def __init__(self, hidden_size: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_linear = nn.Linear(hidden_size, hidden_size, bias=True)
        self.kv_linear = nn.Linear(hidden_size, 2 * hidden_size, bias=True)
        self.proj = nn.Linear(hidden_size, hidden_size, bias=True)

    def caption_keys_values(self, caption: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the projected caption tokens ``[N, L, D]``: two ``[N, H, L, d]`` tensors.

        They depend on the caption alone, not on the latent or the timestep, so a sampler computes them once.
        """
        n, length, width = caption.shape
        kv = self.kv_linear(caption).view(n, length, 2, self.num_heads, width // self.num_heads)  # [N, L, 2, H, d]
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # 2 x [N, H, L, d]
        return k, v

    def forward(
        self, x: torch.Tensor, caption_kv: tuple[torch.Tensor, torch.Tensor], caption_mask: torch.Tensor
    ) -> torch.Tensor:
        """Cross-attend.

        Args:
            x: Image tokens ``[N, T, D]``.
            caption_kv: :meth:`caption_keys_values` of the row's caption, 2 x ``[N, H, L, d]``.
            caption_mask: Boolean ``[N, L]``, True where the caption token is real.

        Returns:
            ``[N, T, D]``.
        """
        n, tokens, width = x.shape
        q = self.q_linear(x).view(n, tokens, self.num_heads, width // self.num_heads).transpose(1, 2)  # [N, H, T, d]
        k, v = caption_kv  # 2 x [N, H, L, d]
        key_mask = caption_mask[:, None, None, :]  # [N, 1, 1, L]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)  # [N, H, T, d]
        return self.proj(out.transpose(1, 2).reshape(n, tokens, width))  # [N, T, D]


class FeedForward(nn.Module):
    """Two-layer MLP with tanh-approximated GELU (timm ``Mlp`` as used by PixArt)."""

    def __init__(self, hidden_size: int, inner_size: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, inner_size, bias=True)
        self.fc2 = nn.Linear(inner_size, hidden_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, T, D] -> [N, T, D]``."""
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


#################################################################################
#                             DiT block and final layer                         #
#################################################################################


class MIGETransformerBlock(nn.Module):
    """PixArt block with adaLN-single: modulated self-attention, ungated cross-attention, modulated MLP."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=NORM_EPS)
        self.self_attn = SelfAttention(hidden_size, num_heads)
        self.cross_attn = CrossAttention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=NORM_EPS)
        self.mlp = FeedForward(hidden_size, int(hidden_size * mlp_ratio))
        # Per-block learned offsets added to the shared timestep modulation t0.
        self.scale_shift_table = nn.Parameter(torch.randn(6, hidden_size) / hidden_size**0.5)

    def forward(
        self,
        x: torch.Tensor,
        caption_kv: tuple[torch.Tensor, torch.Tensor],
        caption_mask: torch.Tensor,
        t0: torch.Tensor,
    ) -> torch.Tensor:
        """Run one block.

        Args:
            x: Image tokens ``[N, T, D]``.
            caption_kv: This block's cross-attention keys and values of the caption, 2 x ``[N, H, L, d]``.
            caption_mask: Boolean ``[N, L]``.
            t0: Timestep modulation ``[N, 6 * D]``.

        Returns:
            ``[N, T, D]``.
        """
        modulation = self.scale_shift_table[None] + t0.reshape(x.shape[0], 6, -1)  # [N, 6, D]
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = modulation.chunk(6, 1)  # [N, 1, D]
        x = x + gate_msa * self.self_attn(modulate(self.norm1(x), shift_msa, scale_msa))  # [N, T, D]
        x = x + self.cross_attn(x, caption_kv, caption_mask)  # [N, T, D]
        x = x + gate_mlp * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))  # [N, T, D]
        return x


class FinalLayer(nn.Module):
    """PixArt ``T2IFinalLayer``: norm, modulation by the timestep embedding ``t`` (not ``t0``), linear."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=NORM_EPS)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels, bias=True)
        self.scale_shift_table = nn.Parameter(torch.randn(2, hidden_size) / hidden_size**0.5)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``x`` ``[N, T, D]``, ``t`` ``[N, D]`` -> ``[N, T, p*p*C_out]``."""
        shift, scale = (self.scale_shift_table[None] + t[:, None]).chunk(2, dim=1)  # 2 x [N, 1, D]
        return self.linear(modulate(self.norm_final(x), shift, scale))  # [N, T, p*p*C_out]


#################################################################################
#                                 Core MIGE DiT                                 #
#################################################################################


class MIGETransformer2DModel(ModelMixin, ConfigMixin):
    """MIGE's DiT: denoises a latent conditioned on T5 states of a multimodal instruction and a source latent.

    Argument names follow the original ``MIGE`` constructor so its kwargs can be passed through
    (:func:`transformer_config_from_original`); defaults are ``MIGE_XL_2`` at 512 px, as used for inference.

    Args:
        input_size: Latent height/width the position embedding is built for (64 at 512 px).
        patch_size: Patch size of ``x_embedder``.
        in_channels: Latent channels (4). The network input has ``2 * in_channels`` (latent ‖ source).
        hidden_size: Transformer width.
        depth: Number of blocks.
        num_heads: Attention heads.
        mlp_ratio: MLP inner width / hidden size.
        pred_sigma: Whether the output also carries learned-variance channels (``2 * in_channels`` outputs).
        caption_channels: Width of the caption states (T5 ``d_model``).
        model_max_length: Caption length (tokens) of the null caption.
        lewei_scale: PixArt's position-embedding interpolation scale.
    """

    _no_split_modules: ClassVar[list[str]] = ["MIGETransformerBlock"]

    @register_to_config
    def __init__(
        self,
        input_size: int = 64,
        patch_size: int = 2,
        in_channels: int = 4,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        pred_sigma: bool = True,
        caption_channels: int = 4096,
        model_max_length: int = 256,
        lewei_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.out_channels = 2 * in_channels if pred_sigma else in_channels
        grid_size = input_size // patch_size

        # Embedders: patches of cat(x_t, source), timestep, caption.
        self.x_embedder = PatchEmbed(patch_size, 2 * in_channels, hidden_size)
        pos_embed = sincos_2d_position_embedding(hidden_size, grid_size, grid_size, lewei_scale)  # [T, D]
        self.register_buffer("pos_embed", pos_embed[None], persistent=True)
        self.time_proj = Timesteps(TIMESTEP_FREQUENCY_CHANNELS, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.t_embedder = TimestepEmbedding(TIMESTEP_FREQUENCY_CHANNELS, hidden_size, act_fn="silu")
        self.t_block = nn.Linear(hidden_size, 6 * hidden_size, bias=True)
        self.y_embedder = PixArtAlphaTextProjection(caption_channels, hidden_size, act_fn="gelu_tanh")
        # Unconditional caption for classifier-free guidance. Random here like the original's init; a
        # checkpoint must overwrite it (the converter refuses a state dict without it).
        null_caption = torch.randn(model_max_length, caption_channels) / caption_channels**0.5  # [L, C_cap]
        self.register_buffer("null_caption", null_caption, persistent=True)

        self.blocks = nn.ModuleList(MIGETransformerBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth))
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)

    def embed_reference_latents(self, reference_latents: torch.Tensor) -> torch.Tensor:
        """Embed reference-image VAE latents with ``x_embedder``, as the original feeds its FFM (spec §1.4).

        The reference latent takes the noisy-latent channels, the source channels are zero, and no position
        embedding is added.

        Args:
            reference_latents: Unscaled posterior samples ``[N, in_channels, H, W]``.

        Returns:
            Tokens ``[N, H*W/p², hidden_size]`` in the model dtype.
        """
        latents = reference_latents.to(self.dtype)  # [N, 4, H, W]
        latents = torch.cat([latents, torch.zeros_like(latents)], dim=1)  # [N, 8, H, W]
        return self.x_embedder(latents)  # [N, T, D]

    def caption_keys_values(self, encoder_hidden_states: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every block's cross-attention keys and values of a caption (``y_embedder``, then each ``kv_linear``).

        They depend on the caption alone, so a sampler passes them to :meth:`forward` at every step instead of
        recomputing them (the same operations on the same inputs: outputs are unchanged).

        Args:
            encoder_hidden_states: Caption states ``[N, L, caption_channels]``.

        Returns:
            Per block, keys and values ``[N, heads, L, hidden_size / heads]``.
        """
        caption = self.y_embedder(encoder_hidden_states.to(self.dtype))  # [N, L, D]
        return [block.cross_attn.caption_keys_values(caption) for block in self.blocks]

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None,
        encoder_attention_mask: torch.Tensor,
        source_latents: torch.Tensor,
        return_dict: bool = True,
        caption_keys_values: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> Transformer2DModelOutput | tuple[torch.Tensor]:
        """Predict noise (and the variance interpolation) for a batch of rows.

        Args:
            hidden_states: Noisy latents ``[N, in_channels, H, W]``.
            timestep: Model timesteps ``[N]`` (0..999 scale, may be fractional). Rounded to the model
                dtype first, as in the original.
            encoder_hidden_states: Caption states ``[N, L, caption_channels]`` (T5 output, or ``null_caption``
                rows for the unconditional branches); may be None when ``caption_keys_values`` is given.
            encoder_attention_mask: ``[N, L]``, non-zero for real caption tokens.
            source_latents: Source latents ``[N, in_channels, H, W]`` (zeros when there is no source image).
            return_dict: Return a :class:`Transformer2DModelOutput` instead of a tuple.
            caption_keys_values: :meth:`caption_keys_values` of these rows' captions, computed once per sampling
                run; computed from ``encoder_hidden_states`` when None.

        Returns:
            ``sample`` ``[N, out_channels, H, W]``: channels ``[:in_channels]`` are the noise prediction,
            the rest the learned variance.
        """
        dtype = self.dtype
        height, width = hidden_states.shape[-2:]
        patch = self.config.patch_size
        if (height // patch) * (width // patch) != self.pos_embed.shape[1]:
            raise ValueError(
                f"latents are {height}x{width}; this model's position table is for {self.config.input_size}²"
            )

        # Embed timestep, latent patches and caption.
        timestep = timestep.to(dtype)  # [N] (bf16 rounding quirk when the model is bf16)
        t = self.t_embedder(self.time_proj(timestep).to(dtype))  # [N, D]
        t0 = self.t_block(F.silu(t))  # [N, 6D]
        x = torch.cat([hidden_states.to(dtype), source_latents.to(dtype)], dim=1)  # [N, 8, H, W]
        x = self.x_embedder(x) + self.pos_embed.to(dtype)  # [N, T, D]
        if caption_keys_values is None:
            if encoder_hidden_states is None:
                raise ValueError("pass encoder_hidden_states or caption_keys_values")
            caption_keys_values = self.caption_keys_values(encoder_hidden_states)  # depth x 2 x [N, H, L, d]
        caption_mask = encoder_attention_mask.to(x.device) != 0  # [N, L]

        # Transformer blocks.
        for block, caption_kv in zip(self.blocks, caption_keys_values, strict=True):
            x = block(x, caption_kv, caption_mask, t0)  # [N, T, D]

        # Final layer and unpatchify.
        x = self.final_layer(x, t)  # [N, T, p*p*C_out]
        sample = self.unpatchify(x, height // patch, width // patch)  # [N, C_out, H, W]
        if not return_dict:
            return (sample,)
        return Transformer2DModelOutput(sample=sample)

    def unpatchify(self, x: torch.Tensor, grid_height: int, grid_width: int) -> torch.Tensor:
        """Fold tokens ``[N, h*w, p*p*C]`` (per-patch layout ``(p, q, c)``) back to ``[N, C, h*p, w*p]``."""
        patch, channels = self.config.patch_size, self.out_channels
        x = x.reshape(x.shape[0], grid_height, grid_width, patch, patch, channels)  # [N, h, w, p, q, C]
        x = torch.einsum("nhwpqc->nchpwq", x)  # [N, C, h, p, w, q]
        return x.reshape(x.shape[0], channels, grid_height * patch, grid_width * patch)  # [N, C, H, W]


#################################################################################
#                      Original config and checkpoint mapping                   #
#################################################################################


def transformer_config_from_original(mige_kwargs: Mapping[str, object]) -> dict[str, object]:
    """Pick the DiT arguments out of the original ``MIGE(...)`` constructor kwargs.

    Arguments that belong to the encoder (``img_size``, ``t5_model``, ``num_query_token``, ...) or are
    unused at inference (``class_dropout_prob``, ``drop_path``, ...) are ignored; missing DiT arguments keep
    this model's defaults.

    Args:
        mige_kwargs: Keyword arguments as passed to the original ``MIGE`` class (e.g. the fixture config's
            ``mige_kwargs`` merged with ``mige_defaults_kept``).

    Returns:
        Keyword arguments for :class:`MIGETransformer2DModel`.
    """
    accepted = set(inspect.signature(MIGETransformer2DModel.__init__).parameters) - {"self"}
    config = {key: value for key, value in mige_kwargs.items() if key in accepted}
    if mige_kwargs.get("window_size", 0) or mige_kwargs.get("use_rel_pos", False):
        raise ValueError("windowed attention / relative positions are not used by MIGE inference and not supported")
    return config


# Each rule maps one family of original keys (full match) to a key of MIGETransformer2DModel.
_ORIGINAL_KEY_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"x_embedder\.proj\.(weight|bias)", r"x_embedder.proj.\1"),
        (r"pos_embed", "pos_embed"),
        (r"t_embedder\.mlp\.0\.(weight|bias)", r"t_embedder.linear_1.\1"),
        (r"t_embedder\.mlp\.2\.(weight|bias)", r"t_embedder.linear_2.\1"),
        (r"t_block\.1\.(weight|bias)", r"t_block.\1"),
        (r"y_embedder\.y_proj\.fc1\.(weight|bias)", r"y_embedder.linear_1.\1"),
        (r"y_embedder\.y_proj\.fc2\.(weight|bias)", r"y_embedder.linear_2.\1"),
        (r"y_embedder\.y_embedding", "null_caption"),
        (r"blocks\.(\d+)\.scale_shift_table", r"blocks.\1.scale_shift_table"),
        (r"blocks\.(\d+)\.attn\.(qkv|proj)\.(weight|bias)", r"blocks.\1.self_attn.\2.\3"),
        (
            r"blocks\.(\d+)\.cross_attn\.(q_linear|kv_linear|proj)\.(weight|bias)",
            r"blocks.\1.cross_attn.\2.\3",
        ),
        (r"blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", r"blocks.\1.mlp.\2.\3"),
        (r"final_layer\.scale_shift_table", "final_layer.scale_shift_table"),
        (r"final_layer\.linear\.(weight|bias)", r"final_layer.linear.\1"),
    )
)

# Top-level names of the original ``MIGE`` state dict that belong to the DiT (everything else is the encoder).
ORIGINAL_TRANSFORMER_MODULES = frozenset(
    {"x_embedder", "pos_embed", "t_embedder", "t_block", "y_embedder", "blocks", "final_layer"}
)


def is_original_transformer_key(key: str) -> bool:
    """Whether an original ``MIGE`` state-dict key belongs to the DiT (this model) rather than the encoder."""
    return key.split(".", 1)[0] in ORIGINAL_TRANSFORMER_MODULES


def map_original_transformer_key(key: str) -> str:
    """Translate one original DiT key to this model's key.

    Raises:
        KeyError: ``key`` matches no known DiT key family.
    """
    for pattern, replacement in _ORIGINAL_KEY_RULES:
        if pattern.fullmatch(key):
            return pattern.sub(replacement, key)
    raise KeyError(f"unmapped original DiT key: {key!r}")


def convert_original_transformer_state_dict(
    original_state_dict: Mapping[str, torch.Tensor], transformer: MIGETransformer2DModel
) -> dict[str, torch.Tensor]:
    """Map the DiT part of an original ``MIGE`` state dict onto ``transformer``'s keys, strictly.

    Encoder keys (see :func:`is_original_transformer_key`) are ignored, so the whole original state dict
    may be passed. Every DiT key must map, every key of ``transformer.state_dict()`` must be produced and
    every shape must match; otherwise this raises listing all offenders. Tensors are returned as given (no
    dtype change).

    Args:
        original_state_dict: Original ``MIGE.state_dict()`` (or ``model.pth['state_dict']``).
        transformer: The target model; may live on the ``meta`` device (only key names and shapes are read).

    Returns:
        State dict for ``transformer.load_state_dict(..., strict=True)``.

    Raises:
        ValueError: Unmapped, duplicate, missing or wrongly shaped keys.
    """
    return remap_original_state_dict(
        original_state_dict,
        transformer.state_dict(),
        belongs=is_original_transformer_key,
        rename=map_original_transformer_key,
        part="DiT",
    )
