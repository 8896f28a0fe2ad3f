"""ViLT (transformers ``ViltModel``) with skippable encoder layers En0..11."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from das_tune.backbones.adapters import Adapter, ParallelAdapter, SkippableLayer, add_lora
from das_tune.backbones.layered import LayerSkipBackbone, additive_mask, check_petl
from das_tune.backbones.processing import (
    example_text, images_to_tensor, load_tokenizer, minilm_path, minilm_vocab_size, require_folder, tokenize,
)
from das_tune.errors import UserError

MEAN = STD = (0.5, 0.5, 0.5)
TINY = dict(
    hidden_size=32, num_hidden_layers=12, num_attention_heads=2, intermediate_size=64,
    image_size=64, patch_size=16, max_position_embeddings=40,
)


def load_vilt(checkpoint: str | None, tiny: bool, image_size: int, random_weights: bool) -> nn.Module:
    from transformers import ViltConfig, ViltModel

    if tiny:
        return ViltModel(ViltConfig(vocab_size=minilm_vocab_size(), **TINY)).eval()
    if random_weights:
        return ViltModel(ViltConfig(image_size=image_size), add_pooling_layer=True).eval()
    folder = require_folder(checkpoint, "ViLT checkpoint", "checkpoint=PATH")
    model = ViltModel.from_pretrained(str(folder), local_files_only=True, attn_implementation="eager")
    model.config.image_size = image_size
    return model.eval()


def adapt_layer(layer: nn.Module, dim: int, width: int, petl: str, lora_rank: int) -> None:
    """Two parallel adapters per kept block (so a skip-adapter of 2 × 96 = 192), or LoRA on q, v."""
    if petl == "lora":
        add_lora(layer, ["query", "value"], lora_rank)
        return
    # ViltSelfOutput ignores its residual argument (the layer adds it): add the adapter to its output.
    layer.attention.output = ParallelAdapter(layer.attention.output, Adapter(dim, width), into_residual=False)
    layer.output = ParallelAdapter(layer.output, Adapter(dim, width))


class ViltBackbone(LayerSkipBackbone):
    tiny_ignores = ("tokenizer", "image_size", "max_text_len")

    def __init__(
        self, vilt: nn.Module, tokenizer_path: str, *, adapter_width: int = 96, skip_adapter_width: int = 192,
        petl: str = "adapter", lora_rank: int = 8, max_text_len: int = 40,
    ) -> None:
        super().__init__()
        check_petl(petl)
        config = vilt.config
        dim = config.hidden_size
        self.embeddings = vilt.embeddings
        for layer in vilt.encoder.layer:
            adapt_layer(layer, dim, adapter_width, petl, lora_rank)
        self.layers = nn.ModuleList(
            SkippableLayer(f"En{i}", layer, dim, skip_adapter_width) for i, layer in enumerate(vilt.encoder.layer)
        )
        self.layernorm = vilt.layernorm
        self.pooler = vilt.pooler
        self.layer_names = [layer.name for layer in self.layers]
        self.feature_dim = dim
        self.image_size = config.image_size
        self.max_text_len = min(max_text_len, config.max_position_embeddings)
        self.tokenizer_path = tokenizer_path
        self.freeze()

    @classmethod
    def build(
        cls, checkpoint: str | None = None, tiny: bool = False, tokenizer: str | None = None,
        image_size: int = 384, random_weights: bool = False, **options: Any,
    ) -> ViltBackbone:
        """``random_weights``: full size without a checkpoint (for FLOPs counting only)."""
        vilt = load_vilt(checkpoint, tiny, image_size, random_weights)
        return cls(vilt, tokenizer or (minilm_path() if tiny else str(checkpoint)), **options)

    def preprocess(self, texts, images=None, text_pairs=None) -> dict[str, torch.Tensor]:
        if images is None or len(images) != len(texts):
            raise UserError("ViLT needs one image per text")
        inputs = tokenize(load_tokenizer(self.tokenizer_path), texts, text_pairs, self.max_text_len)
        inputs["pixel_values"] = images_to_tensor(images, self.image_size, MEAN, STD)
        return inputs

    def example_inputs(self, batch_size: int = 1) -> dict[str, torch.Tensor]:
        return {
            **example_text(batch_size, self.max_text_len),
            "pixel_values": torch.zeros(batch_size, 3, self.image_size, self.image_size),
        }

    def features(self, input_ids, pixel_values, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        pixel_mask = pixel_values.new_ones(pixel_values.shape[0], *pixel_values.shape[2:], dtype=torch.long)
        x, valid = self.embeddings(
            input_ids, attention_mask, token_type_ids, pixel_values, pixel_mask, None, None
        )
        mask = additive_mask(valid, x.dtype)
        for layer in self.layers:
            x = layer(x, mask)
        return self.pooler(self.layernorm(x))

