"""A single-stream vision-language model on a BERT-family encoder (the CPU study's model).

Image → a small conv stem (16× down: 64×64 pixels → 16 tokens, normalised like the text embeddings)
→ appended to the text embeddings → the encoder's skippable layers (En0..N-1) → masked mean pooling.

``minilm_vl`` starts by default from the packaged vision-language pre-training of all-MiniLM-L6-v2
(``das-tune pretrain minilm_vl``): its stem and its low-rank deltas to the encoder layers, merged into
the frozen weights at load. The stem is then frozen with the rest, as METER/ViLT's encoders are; with
``vl_weights: null`` the stem is fresh and trains with the adapters (text-only MiniLM, no pre-training).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from das_tune.backbones.bert import load_encoder, masked_mean, skippable_layers
from das_tune.backbones.layered import LayerSkipBackbone, additive_mask
from das_tune.backbones.processing import example_text, images_to_tensor, load_tokenizer, minilm_path, tokenize
from das_tune.errors import UserError

MEAN = STD = (0.5, 0.5, 0.5)
STRIDE = 16  # the stem's total down-sampling
EXAMPLE_TEXT_LEN = 16  # text tokens of the example inputs (FLOPs, latency): a short question
PACKAGED = "packaged"
PACKAGED_WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "minilm_vl.safetensors"


def _conv_block(channels_in: int, channels_out: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(channels_in, channels_out, 3, stride=stride, padding=1), nn.GroupNorm(8, channels_out), nn.GELU()]


class ImageTokens(nn.Module):
    """Conv stem: three stride-2 3×3 convolutions, a stride-1 one, and a stride-2 2×2 projection,
    pixels → ``[batch, tokens, dim]``.

    The stride-1 convolution widens each token's view to about 50 pixels, so that a token knows the
    outline it lies on (a shape's corners are often in other tokens); without it and the group norms the
    stem learns colour but not shape, even trained directly on the shape. The output LayerNorm starts as
    a copy of the text embeddings' LayerNorm, so image tokens enter the encoder at the norm its layers
    were trained on.
    """

    def __init__(self, dim: int, image_size: int, text_norm: nn.LayerNorm | None = None) -> None:
        super().__init__()
        if image_size % STRIDE:
            raise UserError(f"image_size {image_size} is not a multiple of {STRIDE}")
        self.stem = nn.Sequential(
            *_conv_block(3, 32, 2), *_conv_block(32, 64, 2), *_conv_block(64, 128, 2), *_conv_block(128, 128, 1),
            nn.Conv2d(128, dim, 2, stride=2),
        )
        self.position = nn.Parameter(torch.randn(1, (image_size // STRIDE) ** 2, dim) * 0.02)
        self.token_type = nn.Parameter(torch.zeros(1, 1, dim))
        self.norm = nn.LayerNorm(dim, eps=text_norm.eps if text_norm is not None else 1e-12)
        if text_norm is not None:
            self.norm.load_state_dict(text_norm.state_dict())

    def forward(self, pixel_values: torch.Tensor, image_token_type: int = 1) -> torch.Tensor:
        tokens = self.stem(pixel_values).flatten(2).transpose(1, 2)
        return self.norm(tokens + self.position + self.token_type[image_token_type - 1])


def joint_sequence(
    embeddings: nn.Module, image_tokens: ImageTokens, input_ids: torch.Tensor, pixel_values: torch.Tensor,
    attention_mask: torch.Tensor | None = None, token_type_ids: torch.Tensor | None = None, image_token_type: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Text embeddings followed by image tokens, and the ``[batch, tokens]`` 1/0 mask of valid tokens."""
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    text = embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
    image = image_tokens(pixel_values.to(text.dtype), image_token_type)
    valid = torch.cat([attention_mask, attention_mask.new_ones(image.shape[:2])], dim=1)
    return torch.cat([text, image], dim=1), valid


def load_vl_weights(encoder: nn.Module, image_tokens: ImageTokens, path: str | Path) -> None:
    """Load a pre-training's stem and merge its low-rank deltas into ``encoder``'s linear layers.

    The file (written by :mod:`das_tune.jobs.pretrain`) holds ``image_tokens.*`` and, for each adapted linear
    layer at ``<module path>`` in ``encoder`` (a BertModel), ``<path>.lora_A`` / ``<path>.lora_B``; ``W += scale · B A``.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"vision-language weights {path} not found; pass vl_weights=PATH, or vl_weights=null for plain MiniLM")
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k).float() for k in f.keys()}
        scale = float(f.metadata()["lora_scale"])
    stem = {k.removeprefix("image_tokens."): v for k, v in tensors.items() if k.startswith("image_tokens.")}
    image_tokens.load_state_dict(stem)
    with torch.no_grad():
        for key in (k for k in tensors if k.endswith(".lora_A")):
            module = key.removesuffix(".lora_A")
            linear = encoder.get_submodule(module)
            linear.weight += scale * tensors[f"{module}.lora_B"] @ tensors[key]


class SingleStreamVL(LayerSkipBackbone):
    tiny_ignores = ("tokenizer", "image_size", "max_text_len")

    def __init__(
        self, encoder: nn.Module, tokenizer_path: str, *, adapter_width: int = 96, skip_adapter_width: int | None = None,
        petl: str = "adapter", lora_rank: int = 8, image_size: int = 64, max_text_len: int = 32,
        vl_weights: str | Path | None = None, granularity: str = "layer",
    ) -> None:
        super().__init__()
        dim = encoder.config.hidden_size
        self.encoder_config = encoder.config
        self.embeddings = encoder.embeddings
        self.image_tokens = ImageTokens(dim, image_size, encoder.embeddings.LayerNorm)
        if vl_weights is not None:
            load_vl_weights(encoder, self.image_tokens, vl_weights)
        self.layers = skippable_layers(
            encoder.encoder.layer, "En", dim, adapter_width, skip_adapter_width, petl, lora_rank, granularity
        )
        self.layer_names = [layer.name for layer in self.layers]
        self.feature_dim = dim
        self.tokenizer_path = tokenizer_path
        self.image_size = image_size
        self.max_text_len = max_text_len
        self.freeze(extras=[] if vl_weights is not None else [self.image_tokens])

    @classmethod
    def build(
        cls, checkpoint: str | None = None, tiny: bool = False, tokenizer: str | None = None,
        num_layers: int = 12, dropout: float | None = None, **options: Any,
    ) -> SingleStreamVL:
        encoder = load_encoder(checkpoint, tiny, num_layers, dropout)
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
        x, valid = joint_sequence(
            self.embeddings, self.image_tokens, input_ids, pixel_values, attention_mask, token_type_ids, image_token_type
        )
        mask = additive_mask(valid, x.dtype)
        for layer in self.layers:
            x = layer(x, mask)
        return masked_mean(x, valid)


class MiniLMVL(SingleStreamVL):
    """The single-stream model on the packaged all-MiniLM-L6-v2 (6 layers): no checkpoint to give."""

    # the packaged pre-training is MiniLM's: a tiny model's study drops it, as it drops its sizes
    tiny_ignores = (*SingleStreamVL.tiny_ignores, "vl_weights")

    @classmethod
    def build(
        cls, checkpoint: str | None = None, tiny: bool = False, vl_weights: str | Path | None = PACKAGED, **options: Any,
    ) -> MiniLMVL:
        """all-MiniLM-L6-v2 with the packaged vision-language pre-training (``vl_weights``: "packaged", a
        file, or None for plain MiniLM). Tiny random models use one only when given a file."""
        if vl_weights == PACKAGED:
            vl_weights = None if tiny or checkpoint is not None else PACKAGED_WEIGHTS
        return super().build(checkpoint or minilm_path(), tiny, num_layers=6, vl_weights=vl_weights, **options)
