"""Metrics as the reference computes them (per example, so batches can be summed)."""

from __future__ import annotations

import torch

RECALL_KS = (1, 5, 10)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """1.0 where the arg-max class is the label, else 0.0."""
    return (logits.argmax(dim=-1) == labels).float()


def vqa_score(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The soft VQA score of the arg-max answer: partial credit from the annotators' target scores."""
    return targets.gather(1, logits.argmax(dim=-1, keepdim=True)).squeeze(1).float()


def retrieval_recalls(scores: torch.Tensor, text_image: torch.Tensor) -> dict[str, float]:
    """Recall@1/5/10 for image retrieval (``ir_rK``) and text retrieval (``tr_rK``).

    ``scores[i, t]`` scores image ``i`` against text ``t``; ``text_image[t]`` is the image that text
    ``t`` describes. IR: a text hits when its image is among its top-K images. TR: an image hits when
    any of its top-K texts describes it. K is capped at the number of candidates.
    """
    n_images, n_texts = scores.shape
    image_ids = torch.arange(n_images)
    recalls = {}
    for k in RECALL_KS:
        top_images = scores.topk(min(k, n_images), dim=0).indices  # [k, texts]
        recalls[f"ir_r{k}"] = (top_images == text_image.unsqueeze(0)).any(dim=0).float().mean().item()
        top_texts = scores.topk(min(k, n_texts), dim=1).indices  # [images, k]
        hits = text_image[top_texts] == image_ids.unsqueeze(1)
        recalls[f"tr_r{k}"] = hits.any(dim=1).float().mean().item()
    return recalls
