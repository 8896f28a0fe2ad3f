"""A single-stream vision-language model on a frozen BERT-family encoder (the CPU study's model).

Image → trainable patch embedding (+ trainable position and type embeddings) → appended to the
frozen text embeddings → the encoder's skippable layers (En0..N-1) → masked mean pooling.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from das_tune.backbones.bert import load_encoder, masked_mean, skippable_layers
from das_tune.backbones.layered import LayerSkipBackbone, additive_mask
from das_tune.backbones.processing import example_text, images_to_tensor, load_tokenizer, minilm_path, tokenize
from das_tune.errors import UserError

MEAN = STD = (0.5, 0.5, 0.5)
EXAMPLE_TEXT_LEN = 16  # text tokens of the example inputs (FLOPs, latency): a short question


class ImageTokens(nn.Module):
    """Trainable patch embedding: pixels → ``[batch, patches, dim]`` tokens."""

    def __init__(self, dim: int, image_size: int, patch_size: int) -> None:
        super().__init__()
        if image_size % patch_size:
            raise UserError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        self.patch = nn.Conv2d(3, dim, patch_size, stride=patch_size)
        self.position = nn.Parameter(torch.randn(1, (image_size // patch_size) ** 2, dim) * 0.02)
        self.token_type = nn.Parameter(torch.zeros(1, 1, dim))
        self.norm = nn.LayerNorm(dim)

    def forward(self, pixel_values: torch.Tensor, image_token_type: int = 1) -> torch.Tensor:
        tokens = self.patch(pixel_values).flatten(2).transpose(1, 2)
        return self.norm(tokens + self.position + self.token_type[image_token_type - 1])


class SingleStreamVL(LayerSkipBackbone):
    tiny_ignores = ("tokenizer", "image_size", "patch_size", "max_text_len")

    def __init__(
        self, encoder: nn.Module, tokenizer_path: str, *, adapter_width: int = 96, skip_adapter_width: int = 192,
        petl: str = "adapter", lora_rank: int = 8, image_size: int = 64, patch_size: int = 16,
        max_text_len: int = 32,
    ) -> None:
        super().__init__()
        dim = encoder.config.hidden_size
        self.embeddings = encoder.embeddings
        self.image_tokens = ImageTokens(dim, image_size, patch_size)
        self.layers = skippable_layers(
            encoder.encoder.layer, "En", dim, adapter_width, skip_adapter_width, petl, lora_rank
        )
        self.layer_names = [layer.name for layer in self.layers]
        self.feature_dim = dim
        self.tokenizer_path = tokenizer_path
        self.image_size = image_size
        self.max_text_len = max_text_len
        self.freeze(extras=[self.image_tokens])

    @classmethod
    def build(
        cls, checkpoint: str | None = None, tiny: bool = False, tokenizer: str | None = None,
        num_layers: int = 12, **options: Any,
    ) -> SingleStreamVL:
        encoder = load_encoder(checkpoint, tiny, num_layers)
        tokenizer_path = tokenizer or (minilm_path() if tiny else str(checkpoint))
        return cls(encoder, tokenizer_path, **options)

    def use_image_token_types(self, count: int) -> None:
        table = self.image_tokens.token_type.detach()
        if len(table) < count:
            extra = table[-1:].expand(count - len(table), -1, -1)
            self.image_tokens.token_type = nn.Parameter(torch.cat([table, extra]))

    def preprocess(self, texts, images=None, text_pairs=None) -> dict[str, torch.Tensor]:
        if images is None or len(images) != len(texts):
            raise UserError("a vision-language backbone needs one image per text")
        inputs = tokenize(load_tokenizer(self.tokenizer_path), texts, text_pairs, self.max_text_len)
        inputs["pixel_values"] = images_to_tensor(images, self.image_size, MEAN, STD)
        return inputs

    def example_inputs(self, batch_size: int = 1) -> dict[str, torch.Tensor]:
        return {
            **example_text(batch_size, EXAMPLE_TEXT_LEN),
            "pixel_values": torch.zeros(batch_size, 3, self.image_size, self.image_size),
        }

    def features(self, input_ids, pixel_values, attention_mask=None, token_type_ids=None, image_token_type=1) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        text = self.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        image = self.image_tokens(pixel_values.to(text.dtype), image_token_type)
        x = torch.cat([text, image], dim=1)
        valid = torch.cat([attention_mask, attention_mask.new_ones(image.shape[:2])], dim=1)
        mask = additive_mask(valid, x.dtype)
        for layer in self.layers:
            x = layer(x, mask)
        return masked_mean(x, valid)


class MiniLMVL(SingleStreamVL):
    """The single-stream model on the packaged all-MiniLM-L6-v2 (6 layers): no checkpoint to give."""

    @classmethod
    def build(cls, checkpoint: str | None = None, tiny: bool = False, **options: Any) -> MiniLMVL:
        return super().build(checkpoint or minilm_path(), tiny, num_layers=6, **options)
