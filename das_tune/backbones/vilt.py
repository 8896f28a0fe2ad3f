"""ViLT (transformers ``ViltModel``) with skippable encoder layers En0..11, or with ``granularity="sublayer"``
its attention and feed-forward blocks A0, F0, …, A11, F11 (see ``sublayers``).

As DAS's ViLT: dropout 0.1 in the blocks and embeddings (none on attention probabilities), at most
``max_image_len`` = 200 sampled image patches, two parallel adapters per block that read the block's
input stream, and trainable adapters, pooler and token-type tables.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from das_tune.backbones.adapters import Adapter, SkippableLayer, add_lora
from das_tune.backbones.layered import LayerSkipBackbone, additive_mask, check_petl, extend_rows
from das_tune.backbones.processing import (
    example_text,
    images_to_tensor,
    load_tokenizer,
    minilm_path,
    minilm_vocab_size,
    require_folder,
    tokenize,
)
from das_tune.backbones.sublayers import check_granularity, sublayer_width, vilt_sublayers
from das_tune.errors import UserError

MEAN = STD = (0.5, 0.5, 0.5)
TINY = dict(
    hidden_size=32, num_hidden_layers=12, num_attention_heads=2, intermediate_size=64,
    image_size=64, patch_size=16, max_position_embeddings=40,
)


def load_vilt(
    checkpoint: str | None, tiny: bool, image_size: int, random_weights: bool, dropout: float, max_image_len: int
) -> nn.Module:
    from transformers import ViltConfig, ViltModel

    settings = dict(hidden_dropout_prob=dropout, attention_probs_dropout_prob=0.0, max_image_length=max_image_len)
    if tiny:
        return ViltModel(ViltConfig(vocab_size=minilm_vocab_size(), **TINY, **settings)).eval()
    if random_weights:
        return ViltModel(ViltConfig(image_size=image_size, **settings), add_pooling_layer=True).eval()
    folder = require_folder(checkpoint, "ViLT checkpoint", "checkpoint=PATH")
    model = ViltModel.from_pretrained(str(folder), local_files_only=True, attn_implementation="eager", **settings)
    model.config.image_size = image_size
    return model.eval()


class AdaptedBlock(nn.Module):
    """A ViLT block with DAS's two parallel adapters, each reading the stream the residual adds to
    (the reference's timm ``Block``: ``x + attn(norm1(x)) + adapter0(x)``, then
    ``x + mlp(norm2(x)) + adapter1(x)``)."""

    def __init__(self, block: nn.Module, dim: int, width: int) -> None:
        super().__init__()
        self.block = block
        self.adapter0 = Adapter(dim, width)
        self.adapter1 = Adapter(dim, width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        block = self.block
        x = x + block.attention(block.layernorm_before(x), mask)[0] + self.adapter0(x)
        return block.output(block.intermediate(block.layernorm_after(x)), x) + self.adapter1(x)


def adapt_layer(layer: nn.Module, dim: int, width: int, petl: str, lora_rank: int) -> nn.Module:
    """Two parallel adapters per kept block (so a skip-adapter of 2 × 96 = 192), or LoRA on q, v."""
    if petl == "lora":
        add_lora(layer, ["query", "value"], lora_rank)
        return layer
    return AdaptedBlock(layer, dim, width)


class ViltBackbone(LayerSkipBackbone):
    tiny_ignores = ("tokenizer", "image_size", "max_text_len")

    def __init__(
        self, vilt: nn.Module, tokenizer_path: str, *, adapter_width: int = 96, skip_adapter_width: int | None = None,
        petl: str = "adapter", lora_rank: int = 8, max_text_len: int = 40, granularity: str = "layer",
    ) -> None:
        super().__init__()
        check_petl(petl)
        check_granularity(granularity)
        config = vilt.config
        self.encoder_config = config
        dim = config.hidden_size
        self.embeddings = vilt.embeddings
        width = sublayer_width(granularity, skip_adapter_width, adapter_width)
        candidates = []
        for i, layer in enumerate(vilt.encoder.layer):
            block = adapt_layer(layer, dim, adapter_width, petl, lora_rank)
            if granularity == "sublayer":  # each block keeps its own parallel adapter
                adapters = (block.adapter0, block.adapter1) if petl == "adapter" else (None, None)
                candidates += vilt_sublayers(layer, i, dim, width, adapters)
            else:
                candidates.append(SkippableLayer(f"En{i}", block, dim, width))
        self.layers = nn.ModuleList(candidates)
        self.layernorm = vilt.layernorm
        self.pooler = vilt.pooler
        self.layer_names = [layer.name for layer in self.layers]
        self.feature_dim = dim
        self.image_size = config.image_size
        self.max_text_len = min(max_text_len, config.max_position_embeddings)
        self.max_image_len = config.max_image_length
        self.patch_size = config.patch_size
        self.tokenizer_path = tokenizer_path
        # The reference's name filter also catches BERT's text token-type table inside the embeddings.
        self.freeze(extras=[self.pooler, self.embeddings.token_type_embeddings, self.embeddings.text_embeddings.token_type_embeddings])

    def use_image_token_types(self, count: int) -> None:
        self.embeddings.token_type_embeddings = extend_rows(self.embeddings.token_type_embeddings, 1 + count)

    @classmethod
    def build(
        cls, checkpoint: str | None = None, tiny: bool = False, tokenizer: str | None = None,
        image_size: int = 384, random_weights: bool = False, dropout: float = 0.1, max_image_len: int = 200,
        **options: Any,
    ) -> ViltBackbone:
        """``random_weights``: full size without a checkpoint (for FLOPs counting only)."""
        vilt = load_vilt(checkpoint, tiny, image_size, random_weights, dropout, max_image_len)
        return cls(vilt, tokenizer or (minilm_path() if tiny else str(checkpoint)), **options)

    def preprocess(self, texts, images=None, text_pairs=None) -> dict[str, torch.Tensor]:
        if images is None or len(images) != len(texts):
            raise UserError("ViLT needs one image per text")
        inputs = tokenize(load_tokenizer(self.tokenizer_path), texts, text_pairs, self.max_text_len)
        inputs["pixel_values"] = images_to_tensor(images, self.image_size, MEAN, STD)
        return inputs

    def example_inputs(self, batch_size: int = 1) -> dict[str, torch.Tensor]:
        """ViLT's convention: the shorter side at ``image_size`` (384), the longer at 5/3 of it (640, ViLT's
        cap), of which ``max_image_len`` (200) patches are sampled: 40 + 201 tokens at full size."""
        longer = self.image_size * 5 // 3 // self.patch_size * self.patch_size
        return {
            **example_text(batch_size, self.max_text_len),
            "pixel_values": torch.zeros(batch_size, 3, self.image_size, longer),
        }

    def features(self, input_ids, pixel_values, attention_mask=None, token_type_ids=None, image_token_type=1) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        pixel_mask = pixel_values.new_ones(pixel_values.shape[0], *pixel_values.shape[2:], dtype=torch.long)
        x, valid = self.embeddings(
            input_ids, attention_mask, token_type_ids, pixel_values, pixel_mask, None, None, image_token_type
        )
        mask = additive_mask(valid, x.dtype)
        for layer in self.layers:
            x = layer(x, mask)
        return self.pooler(self.layernorm(x))

