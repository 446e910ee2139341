"""Loads diffusers' deprecated ``BlipDiffusionPipeline`` and makes it run with transformers 5.

diffusers froze the pipeline at 0.33.1, written against transformers 4; three things break with transformers 5, each
fixed here by a subclass that keeps every weight name (so hub checkpoints load unchanged) and restores the
transformers 4 behaviour:

1. Loading: since the move to ``diffusers.pipelines.deprecated``, ``from_pretrained`` cannot resolve the custom
   components (Q-Former, context CLIP, image processor; diffusers issue #14008). :func:`load_blip_diffusion` loads each
   component from its subfolder itself and assembles the pipeline.
2. Q-Former: its layers call transformers' ``Blip2QFormerAttention`` in the v4 form (head mask as third positional
   argument, ``(output, present_key_value)`` tuple back), and its ``forward`` uses ``invert_attention_mask`` and
   ``get_head_mask``, which v5 removed. Unpatched, the first call fails with ``AttributeError: ...
   'invert_attention_mask'``; the attention call would then index the batch instead of the tuple.
3. Context CLIP text encoder: it passes its causal mask as ``causal_attention_mask``, which v5's ``CLIPEncoder`` no
   longer takes and silently drops with its ``**kwargs``: the text encoder would run without a causal mask.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import diffusers
import torch
import transformers
from diffusers.pipelines.deprecated import blip_diffusion
from transformers.models.blip_2.modeling_blip_2 import Blip2QFormerAttention
from transformers.models.clip.modeling_clip import CLIPEncoder

from mige_bench.errors import MigeBenchError

logger = logging.getLogger(__name__)


class V4CallQFormerAttention(Blip2QFormerAttention):
    """transformers 5's Q-Former attention behind the v4 call that diffusers' ``Blip2QFormerLayer`` makes.

    The pipeline never passes a head mask, a key/value cache or ``output_attentions``; those are refused rather than
    ignored, since v5 has no equivalent.
    """

    def forward(  # type: ignore[override]  # the v4 signature is the point
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        past_key_value: Any = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, None]:
        """Returns ``(attention output, no key/value cache)``, the v4 tuple."""
        if head_mask is not None or past_key_value is not None or output_attentions:
            raise NotImplementedError("head masks, key/value caches and attention outputs have no transformers 5 form")
        output = super().forward(hidden_states, attention_mask, encoder_hidden_states, encoder_attention_mask)
        return output, None


class Blip2QFormerModelV5(blip_diffusion.Blip2QFormerModel):
    """diffusers' Q-Former with v4-call attention and the two mask helpers transformers 5 removed."""

    def __init__(self, config: transformers.Blip2Config) -> None:
        super().__init__(config)
        for layer in self.encoder.layer:
            layer.attention.__class__ = V4CallQFormerAttention
            if layer.has_cross_attention:
                layer.crossattention.__class__ = V4CallQFormerAttention
        # The nested Q-Former config never passes through transformers' attention dispatch; eager is what v4 ran.
        config.qformer_config._attn_implementation = "eager"

    def invert_attention_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """v4 semantics: a 0/1 keep-mask (B, S) or (B, T, S) -> additive (B, 1, 1 or T, S); masked = dtype min."""
        mask = mask[:, None, :, :] if mask.dim() == 3 else mask[:, None, None, :]
        mask = mask.to(self.dtype)
        return (1.0 - mask) * torch.finfo(self.dtype).min

    def get_head_mask(self, head_mask: torch.Tensor | None, num_hidden_layers: int) -> list[None]:
        """v4 semantics for the only case the pipeline uses: no head mask is one ``None`` per layer."""
        if head_mask is not None:
            raise NotImplementedError("head masks have no transformers 5 form")
        return [None] * num_hidden_layers


class CausalMaskCLIPEncoder(CLIPEncoder):
    """v5 ``CLIPEncoder`` that still honours v4's separate ``causal_attention_mask`` (added to the padding mask,
    as v4's attention did) instead of dropping it."""

    def forward(  # type: ignore[override]  # takes the v4 arguments ContextCLIPTextTransformer passes
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        causal_attention_mask: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> transformers.modeling_outputs.BaseModelOutput:
        """Runs the layers with the sum of both additive masks; only the last hidden state is returned."""
        if output_attentions or output_hidden_states:
            raise NotImplementedError("attention and hidden-state outputs are not supported")
        if causal_attention_mask is not None:
            attention_mask = causal_attention_mask if attention_mask is None else attention_mask + causal_attention_mask
        return super().forward(inputs_embeds, attention_mask)


class ContextCLIPTextModelV5(blip_diffusion.ContextCLIPTextModel):
    """diffusers' context CLIP text encoder with a causal mask under transformers 5."""

    def __init__(self, config: transformers.CLIPTextConfig) -> None:
        super().__init__(config)
        self.text_model.encoder.__class__ = CausalMaskCLIPEncoder


COMPATIBLE_CLASSES: dict[str, type[torch.nn.Module]] = {
    "Blip2QFormerModel": Blip2QFormerModelV5,
    "ContextCLIPTextModel": ContextCLIPTextModelV5,
}
"""Component classes of the pipeline replaced by their transformers-5-compatible subclasses."""


def load_blip_diffusion(folder: Path, dtype: torch.dtype) -> diffusers.BlipDiffusionPipeline:
    """Builds the pipeline from a ``save_pretrained`` folder (hub layout or current diffusers layout), component by
    component, with the compatible classes above.

    ``model_index.json`` maps each component to ``[library, class name]`` (the library, ``blip_diffusion`` on the hub
    and ``diffusers`` when saved now, does not matter: the class name is looked up); its other entries
    (``ctx_begin_pos``, ``mean``, ``std``) are pipeline arguments.
    """
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    arguments: dict[str, Any] = {}
    for name, value in index.items():
        if name.startswith("_"):
            continue
        is_component = isinstance(value, list) and len(value) == 2 and all(isinstance(part, str) for part in value)
        if not is_component:
            arguments[name] = value
            continue
        class_name = value[1]
        component_class = COMPATIBLE_CLASSES.get(class_name) or next(
            (
                getattr(module, class_name)
                for module in (blip_diffusion, diffusers, transformers)
                if hasattr(module, class_name)
            ),
            None,
        )
        if component_class is None:
            raise MigeBenchError(f"{folder}/model_index.json names an unknown {name} class {class_name!r}.")
        weights = {"dtype": dtype} if issubclass(component_class, torch.nn.Module) else {}
        arguments[name] = component_class.from_pretrained(folder / name, **weights)
    logger.debug("Loaded BLIP-Diffusion components %s from %s", sorted(arguments), folder)
    return diffusers.BlipDiffusionPipeline(**arguments)
