"""BERT-family text encoders (BERT, RoBERTa, MiniLM) from a local Hugging Face folder; candidates En0..N-1,
or with ``granularity="sublayer"`` each layer's attention and feed-forward blocks A0, F0, … (see ``sublayers``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from das_tune.backbones.adapters import Adapter, ParallelAdapter, SkippableLayer, add_lora
from das_tune.backbones.layered import LayerSkipBackbone, additive_mask, check_petl
from das_tune.backbones.processing import example_text, load_tokenizer, minilm_path, minilm_vocab_size, require_folder, tokenize
from das_tune.backbones.sublayers import bert_sublayers, check_granularity, sublayer_width
from das_tune.errors import UserError

TINY = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)


def load_encoder(checkpoint: str | None, tiny: bool, num_layers: int, dropout: float | None = None) -> nn.Module:
    """A frozen BertModel/RobertaModel: random tiny (MiniLM vocabulary) or loaded from ``checkpoint``.
    ``dropout`` replaces the encoder's own (e.g. 0: deterministic steps, so a data-parallel search
    equals one process's exactly)."""
    from transformers import AutoModel, BertConfig, BertModel

    if tiny:
        config = BertConfig(vocab_size=minilm_vocab_size(), num_hidden_layers=num_layers, **TINY)
        model = BertModel(config, add_pooling_layer=False).eval()
    else:
        folder = require_folder(checkpoint, "BERT-family checkpoint", "checkpoint=PATH")
        model = AutoModel.from_pretrained(str(folder), local_files_only=True).eval()
        model.pooler = None  # features are pooled by the backbone itself
    if dropout is not None:
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.p = dropout
    return model


def adapt_layer(layer: nn.Module, dim: int, width: int, petl: str, lora_rank: int) -> None:
    """PETL on one kept BertLayer/RobertaLayer: parallel adapters on both output blocks, or LoRA on q, v."""
    if petl == "lora":
        add_lora(layer, ["query", "value"], lora_rank)
        return
    layer.attention.output = ParallelAdapter(layer.attention.output, Adapter(dim, width))
    layer.output = ParallelAdapter(layer.output, Adapter(dim, width))


def skippable_layers(
    layers: nn.ModuleList, prefix: str, dim: int, adapter_width: int, skip_width: int | None, petl: str,
    lora_rank: int, granularity: str = "layer",
) -> nn.ModuleList:
    """The candidates of a stack of BertLayers: whole layers ``<prefix><i>`` or sublayers ``A<i>``, ``F<i>``."""
    check_petl(petl)
    check_granularity(granularity)
    width = sublayer_width(granularity, skip_width, adapter_width)
    wrapped = []
    for i, layer in enumerate(layers):
        adapt_layer(layer, dim, adapter_width, petl, lora_rank)
        if granularity == "sublayer":
            wrapped += bert_sublayers(layer, i, dim, width)
        else:
            wrapped.append(SkippableLayer(f"{prefix}{i}", layer, dim, width))
    return nn.ModuleList(wrapped)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.to(x.dtype).unsqueeze(-1)
    return (x * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class TextEncoderBackbone(LayerSkipBackbone):
    """A BERT-family encoder: frozen embeddings → skippable layers → mean (or CLS) pooling."""

    tiny_ignores = ("tokenizer", "max_text_len")

    def __init__(
        self, encoder: nn.Module, tokenizer_path: str, *, adapter_width: int = 96, skip_adapter_width: int | None = None,
        petl: str = "adapter", lora_rank: int = 8, max_text_len: int = 128, pooling: str = "mean",
        granularity: str = "layer",
    ) -> None:
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise UserError(f"unknown pooling {pooling!r}; expected 'mean' or 'cls'")
        dim = encoder.config.hidden_size
        self.encoder_config = encoder.config
        self.embeddings = encoder.embeddings
        self.layers = skippable_layers(
            encoder.encoder.layer, "En", dim, adapter_width, skip_adapter_width, petl, lora_rank, granularity
        )
        self.layer_names = [layer.name for layer in self.layers]
        self.feature_dim = dim
        self.tokenizer_path = tokenizer_path
        self.max_text_len = max_text_len
        self.pooling = pooling
        self.freeze()

    @classmethod
    def build(
        cls, checkpoint: str | None = None, tiny: bool = False, tokenizer: str | None = None,
        num_layers: int = 12, dropout: float | None = None, **options: Any,
    ) -> TextEncoderBackbone:
        encoder = load_encoder(checkpoint, tiny, num_layers, dropout)
        tokenizer_path = tokenizer or (minilm_path() if tiny else str(checkpoint))
        return cls(encoder, tokenizer_path, **options)

    def preprocess(self, texts, images=None, text_pairs=None) -> dict[str, torch.Tensor]:
        if images is not None:
            raise UserError("this backbone is a text encoder and takes no images; use a vision-language backbone")
        return tokenize(load_tokenizer(self.tokenizer_path), texts, text_pairs, self.max_text_len)

    def example_inputs(self, batch_size: int = 1) -> dict[str, torch.Tensor]:
        return example_text(batch_size, min(self.max_text_len, 128))

    def features(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        x = self.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        mask = additive_mask(attention_mask, x.dtype)
        for layer in self.layers:
            x = layer(x, mask)
        return x[:, 0] if self.pooling == "cls" else masked_mean(x, attention_mask)


class MiniLM(TextEncoderBackbone):
    """The packaged all-MiniLM-L6-v2 (6 layers): no checkpoint to give."""

    @classmethod
    def build(cls, checkpoint: str | None = None, tiny: bool = False, **options: Any) -> MiniLM:
        return super().build(checkpoint or minilm_path(), tiny, num_layers=6, **options)
