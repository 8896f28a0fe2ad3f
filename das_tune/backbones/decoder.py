"""Decoder language models whose blocks are ``model.layers`` (Llama, Mistral, Qwen2 and the like), from a
local Hugging Face folder or tiny and random from a config.

Candidates are the decoder layers ``L0 … L{n-1}`` or, with ``granularity="sublayer"``, each layer's
attention block ``A<i>`` (``x + self_attn(input_layernorm(x))``) and MLP block ``F<i>``
(``x + mlp(post_attention_layernorm(x))``). The candidates are put in place inside the transformers
model itself (``model.layers[i]`` becomes a :class:`SkippableLayer`, or a pair of them), so the model's
own forward, masks, rotary embeddings, KV cache and ``generate()`` run the supernet and its subnets
unchanged; a skipped layer leaves its cache slot empty.

Kept blocks are adapted with parallel adapters (``petl: adapter``, reading the block's normalised input,
added to its output) or LoRA on ``q_proj`` and ``v_proj`` (``petl: lora``, via peft).

``features`` is the final-normalised hidden state of each sequence's last token (right padding), so any
pooled-feature task works; ``token_logits`` runs the frozen LM head on every position, for tasks that
score tokens (multiple choice by answer likelihood, classification through the LM head).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from das_tune.backbones.adapters import Adapter, SkippableLayer, add_lora
from das_tune.backbones.layered import LayerSkipBackbone, check_petl
from das_tune.backbones.processing import load_tokenizer, minilm_path, minilm_vocab_size, require_folder
from das_tune.backbones.sublayers import check_granularity, sublayer_width
from das_tune.errors import UserError

TINY = dict(
    hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
    tie_word_embeddings=False,
)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
LORA_TARGETS = ["q_proj", "v_proj"]


# -- the blocks ------------------------------------------------------------------------------------
class AdaptedAttention(nn.Module):
    """``self_attn`` with a parallel adapter on its (normalised) input, added to its output."""

    def __init__(self, attention: nn.Module, adapter: Adapter) -> None:
        super().__init__()
        self.attention = attention
        self.adapter = adapter

    def forward(self, hidden_states: torch.Tensor, **kwargs) -> tuple[torch.Tensor, Any]:
        out, weights = self.attention(hidden_states=hidden_states, **kwargs)
        return out + self.adapter(hidden_states), weights


class AdaptedMLP(nn.Module):
    """``mlp`` with a parallel adapter on its (normalised) input."""

    def __init__(self, mlp: nn.Module, adapter: Adapter) -> None:
        super().__init__()
        self.mlp = mlp
        self.adapter = adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x) + self.adapter(x)


class AttentionBlock(nn.Module):
    """A decoder layer's attention half: ``x + self_attn(input_layernorm(x))``."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.input_layernorm = layer.input_layernorm
        self.self_attn = layer.self_attn

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        return x + self.self_attn(hidden_states=self.input_layernorm(x), **kwargs)[0]


class MLPBlock(nn.Module):
    """A decoder layer's MLP half: ``x + mlp(post_attention_layernorm(x))``."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.post_attention_layernorm = layer.post_attention_layernorm
        self.mlp = layer.mlp

    def forward(self, x: torch.Tensor, **ignored) -> torch.Tensor:
        return x + self.mlp(self.post_attention_layernorm(x))


class SplitDecoderLayer(nn.Module):
    """One decoder layer as two candidates, ``A<i>`` then ``F<i>``, in the layer's place in ``model.layers``."""

    def __init__(self, attention: SkippableLayer, mlp: SkippableLayer) -> None:
        super().__init__()
        self.attention = attention
        self.mlp = mlp

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.mlp(self.attention(x, **kwargs))


def adapt_layer(layer: nn.Module, dim: int, width: int, petl: str, lora_rank: int) -> None:
    """PETL on one kept decoder layer: parallel adapters on its attention and MLP, or LoRA on q, v."""
    if petl == "lora":
        add_lora(layer, LORA_TARGETS, lora_rank)
        return
    layer.self_attn = AdaptedAttention(layer.self_attn, Adapter(dim, width))
    layer.mlp = AdaptedMLP(layer.mlp, Adapter(dim, width))


def check_decoder(model: nn.Module, where: str) -> nn.ModuleList:
    """``model.model.layers`` of a causal LM whose layers have the Llama shape, else one line."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    parts = ("self_attn", "mlp", "input_layernorm", "post_attention_layernorm")
    if not isinstance(layers, nn.ModuleList) or not all(hasattr(layer, p) for layer in layers for p in parts):
        kind = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise UserError(
            f"{where}: a {kind!r} model, not a decoder whose blocks are model.layers with self_attn and mlp "
            "(Llama, Mistral, Qwen2 and the like)"
        )
    return layers


def load_causal_lm(checkpoint: str | None, config: Any, dtype: str) -> nn.Module:
    """A frozen causal LM: from the local folder ``checkpoint``, or random from ``config``."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    if checkpoint is None:
        return AutoModelForCausalLM.from_config(config, dtype=DTYPES[dtype]).eval()
    folder = require_folder(checkpoint, "decoder checkpoint", "checkpoint=PATH")
    try:
        found = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as error:
        raise UserError(f"{folder}: not a Hugging Face model folder ({str(error).splitlines()[0]})") from None
    if getattr(found, "is_encoder_decoder", False) or found.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise UserError(f"{folder}: a {found.model_type!r} model, not a decoder language model (Llama, Mistral, Qwen2 …)")
    return AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True, dtype=DTYPES[dtype]).eval()


# -- the backbone --------------------------------------------------------------------------------------
class DecoderBackbone(LayerSkipBackbone):
    """A decoder LM: frozen embeddings → skippable layers → final norm; the LM head stays frozen."""

    tiny_ignores = ("tokenizer", "num_layers", "dtype")
    family = "llama"

    def __init__(
        self, causal_lm: nn.Module, tokenizer_path: str, *, adapter_width: int = 96, skip_adapter_width: int | None = None,
        petl: str = "adapter", lora_rank: int = 8, max_text_len: int = 256, granularity: str = "layer",
    ) -> None:
        super().__init__()
        check_petl(petl)
        check_granularity(granularity)
        layers = check_decoder(causal_lm, f"backbone {self.family!r}")
        dim = causal_lm.config.hidden_size
        width = sublayer_width(granularity, skip_adapter_width, adapter_width)
        dtype = causal_lm.dtype
        for i, layer in enumerate(layers):
            adapt_layer(layer, dim, adapter_width, petl, lora_rank)
            if granularity == "sublayer":
                layers[i] = SplitDecoderLayer(
                    SkippableLayer(f"A{i}", AttentionBlock(layer), dim, width),
                    SkippableLayer(f"F{i}", MLPBlock(layer), dim, width),
                )
            else:
                layers[i] = SkippableLayer(f"L{i}", layer, dim, width)
        self.causal_lm = causal_lm.to(dtype)
        self.layer_names = [m.name for m in self.modules() if isinstance(m, SkippableLayer)]
        self.feature_dim = dim
        self.tokenizer_path = tokenizer_path
        self.max_text_len = max_text_len
        self.freeze()

    @classmethod
    def tiny_config(cls, num_layers: int) -> Any:
        from transformers import LlamaConfig

        return LlamaConfig(vocab_size=minilm_vocab_size(), num_hidden_layers=num_layers, **TINY)

    @classmethod
    def build(
        cls, checkpoint: str | None = None, tiny: bool = False, tokenizer: str | None = None, num_layers: int = 32,
        dtype: str = "float32", **options: Any,
    ) -> DecoderBackbone:
        if not tiny and checkpoint is None:
            raise UserError(f"backbone {cls.family!r} needs checkpoint=PATH: a local Hugging Face decoder folder")
        causal_lm = load_causal_lm(None if tiny else checkpoint, cls.tiny_config(num_layers) if tiny else None, dtype)
        tokenizer_path = tokenizer or (minilm_path() if tiny else str(checkpoint))
        return cls(causal_lm, tokenizer_path, **options)

    @property
    def lm_config(self) -> Any:
        return self.causal_lm.config

    # -- inputs ----------------------------------------------------------------------------------------
    def token_ids(self, text: str) -> list[int]:
        return load_tokenizer(self.tokenizer_path)(text, add_special_tokens=False)["input_ids"]

    def pad_id(self) -> int:
        tokenizer = load_tokenizer(self.tokenizer_path)
        for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id, 0):
            if candidate is not None:
                return candidate
        return 0

    def batch(self, rows: list[list[int]], targets: list[list[int]] | None = None) -> dict[str, torch.Tensor]:
        """Right-padded ``input_ids`` and ``attention_mask`` of token rows (a BOS first where the tokenizer has
        one), each cut to its last ``max_text_len`` tokens; with ``targets``, a ``target_mask`` marking each
        row's target tokens, which follow the row's own tokens."""
        bos = load_tokenizer(self.tokenizer_path).bos_token_id
        targets = targets or [[] for _ in rows]
        sequences = [([bos] if bos is not None else []) + row + target for row, target in zip(rows, targets)]
        sequences = [s[-self.max_text_len :] for s in sequences]
        length = max(len(s) for s in sequences)
        ids = torch.full((len(rows), length), self.pad_id(), dtype=torch.long)
        mask = torch.zeros(len(rows), length, dtype=torch.long)
        target_mask = torch.zeros(len(rows), length, dtype=torch.bool)
        for i, (sequence, target) in enumerate(zip(sequences, targets)):
            ids[i, : len(sequence)] = torch.tensor(sequence)
            mask[i, : len(sequence)] = 1
            target_mask[i, len(sequence) - min(len(target), len(sequence)) : len(sequence)] = True
        batch = {"input_ids": ids, "attention_mask": mask}
        return batch if not any(targets) else {**batch, "target_mask": target_mask}

    def preprocess(self, texts, images=None, text_pairs=None) -> dict[str, torch.Tensor]:
        if images is not None:
            raise UserError(
                f"backbone {self.family!r} is a text-only decoder (no vision encoder configured) and takes no images"
            )
        pairs = text_pairs if text_pairs is not None else [None] * len(texts)
        joined = [text if pair is None else f"{text}\n{pair}" for text, pair in zip(texts, pairs)]
        return self.batch([self.token_ids(text) for text in joined])

    def preprocess_continuations(self, prompts: list[str], continuations: list[str]) -> dict[str, torch.Tensor]:
        """Prompt + continuation rows, with ``target_mask`` on the continuation's tokens."""
        return self.batch([self.token_ids(p) for p in prompts], [self.token_ids(" " + c) for c in continuations])

    def example_inputs(self, batch_size: int = 1) -> dict[str, torch.Tensor]:
        return {"input_ids": torch.zeros(batch_size, min(self.max_text_len, 128), dtype=torch.long)}

    # -- outputs ---------------------------------------------------------------------------------------
    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The final-normalised hidden state of every position."""
        return self.causal_lm.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **ignored) -> torch.Tensor:
        """The last token's final-normalised hidden state, in float32 whatever the model's dtype (heads are float32)."""
        hidden = self.hidden_states(input_ids, attention_mask)
        if attention_mask is None:
            return hidden[:, -1].float()
        last = attention_mask.sum(1) - 1
        return hidden[torch.arange(len(hidden), device=hidden.device), last].float()

    def token_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``[batch, positions, vocabulary]``: the frozen LM head on every position."""
        return self.causal_lm.lm_head(self.hidden_states(input_ids, attention_mask))

    def continuation_log_likelihood(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, target_mask: torch.Tensor
    ) -> torch.Tensor:
        """``[rows]``: the mean log-probability of each row's target tokens (``preprocess_continuations``),
        the LM head run only where a target token is predicted."""
        hidden = self.hidden_states(input_ids, attention_mask)[:, :-1]
        predicts = target_mask[:, 1:]
        log_probs = self.causal_lm.lm_head(hidden[predicts]).float().log_softmax(-1)
        token = log_probs.gather(1, input_ids[:, 1:][predicts][:, None])[:, 0]
        rows = predicts.nonzero()[:, 0]
        total = torch.zeros(len(input_ids), device=token.device).index_add(0, rows, token)
        return total / predicts.sum(1).clamp(min=1)

    def label_word_rows(self, words: list[str]) -> torch.Tensor:
        """The LM head's rows of each word's first token (a verbalizer), ``[len(words), hidden]``."""
        ids = [self.token_ids(" " + word)[:1] or self.token_ids(word)[:1] for word in words]
        if any(not i for i in ids):
            raise UserError(f"label words {words}: one of them has no token in this tokenizer")
        return self.causal_lm.lm_head.weight[[i[0] for i in ids]].detach().clone()

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int = 8, use_cache: bool = True) -> torch.Tensor:
        """Greedy decoding with the current skip set (the model's own ``generate``)."""
        return self.causal_lm.generate(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=max_new_tokens,
            do_sample=False, use_cache=use_cache, pad_token_id=self.pad_id(),
        )


class MistralBackbone(DecoderBackbone):
    family = "mistral"

    @classmethod
    def tiny_config(cls, num_layers: int) -> Any:
        from transformers import MistralConfig

        return MistralConfig(vocab_size=minilm_vocab_size(), num_hidden_layers=num_layers, sliding_window=16, **TINY)


class Qwen2Backbone(DecoderBackbone):
    family = "qwen2"

    @classmethod
    def tiny_config(cls, num_layers: int) -> Any:
        """Sliding-window attention from the middle layer on, so ``layer_types`` differs per layer."""
        from transformers import Qwen2Config

        return Qwen2Config(
            vocab_size=minilm_vocab_size(), num_hidden_layers=num_layers, use_sliding_window=True, sliding_window=16,
            max_window_layers=num_layers // 2, **TINY,
        )
