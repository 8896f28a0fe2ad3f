"""GLUE classification through a decoder's LM head: SST-2 and MNLI as prompts, each class a label word.

The head is ``Linear(hidden, classes)`` initialised from the LM head's rows of the label words' first
tokens (a verbalizer), applied to the last token's final-normalised hidden state: at the start it gives
exactly the LM's next-token logits of the label words, and it trains with the adapters. Data, splits and
files are those of ``sst2`` / ``mnli``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from das_tune.backbones.base import SkippableBackbone
from das_tune.errors import UserError
from das_tune.tasks.base import Batch
from das_tune.tasks.glue import MNLITask, SST2Task, TextExample


class LMHeadClassification:
    """Mixin over a GLUE task: ``template`` formats an example, ``words`` are the label words in class order."""

    name: str
    template: str
    words: tuple[str, ...]

    def build_head(self, feature_dim: int) -> nn.Module:
        return nn.Linear(feature_dim, len(self.words))

    def attach(self, backbone: SkippableBackbone) -> None:
        if not hasattr(backbone, "label_word_rows"):
            raise UserError(f"task {self.name!r} classifies through a language model's head; use a decoder backbone")
        head = self.build_head(backbone.feature_dim)
        with torch.no_grad():
            head.weight.copy_(backbone.label_word_rows(list(self.words)))
            head.bias.zero_()
        backbone.task_head = head

    def collate(self, examples: Sequence[TextExample], backbone: SkippableBackbone) -> Batch:
        prompts = [self.template.format(text=e.text, pair=e.pair) for e in examples]
        return {"inputs": backbone.preprocess(prompts), "targets": torch.tensor([e.label for e in examples])}


class SST2PromptTask(LMHeadClassification, SST2Task):
    name = "sst2_lm"
    template = "Review: {text}\nSentiment:"
    words = ("negative", "positive")


class MNLIPromptTask(LMHeadClassification, MNLITask):
    name = "mnli_lm"
    template = "Premise: {text}\nHypothesis: {pair}\nDoes the premise entail the hypothesis? Answer:"
    words = ("no", "yes", "maybe")  # contradiction, entailment, neutral
