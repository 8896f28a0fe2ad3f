"""How well one redundancy observation ranks the subnets of a supernet, per observation setting.

On the real CPU case (the easyvqa_minilm study: pre-trained MiniLM, easy-VQA), after the study's
warm-up epoch, every subset of ``num_skip`` layers is scored (a) on the whole val split in eval mode
(the supernet's "truth"), (b) as the reference does: train mode (dropout on), the first val batch,
``--repeats`` times, and (c) as das-tune's ``held_out`` default: eval mode, each of the
``observation_batches`` cycled val batches. A single observation is what DAS compares within a
round, so the headline is Kendall's τ between one observation's scores and the truth (and, for
what many rounds average out to, τ of the mean of the observations).
Last line: τ(held_out) ÷ τ(reference), the mean single-observation τ of each.
"""

from __future__ import annotations

import argparse
import itertools
import statistics

import torch

from das_tune.bench.stats import kendall_tau
from das_tune.progress import Reporter
from das_tune.search.supernet import warm_up
from das_tune.spec.study import load_study_spec
from das_tune.training import loop
from das_tune.training.components import build_components


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="/tmp/das-tune-observation-modes")
    args = parser.parse_args()
    spec = load_study_spec("easyvqa_minilm", {
        "output_dir": args.out, "storage": f"sqlite:///{args.out}/db.sqlite", "search.search_epochs": 1,
    })
    loop.seed_everything(0)
    parts = build_components(spec)
    search, model, task = spec.search, parts.model, parts.task
    warm_up(spec, parts, Reporter())  # trains parts.model in place
    subsets = [frozenset(c) for c in itertools.combinations(parts.space.candidates, parts.space.num_skip)]
    val = list(task.loader("val", model, search.batch_size))
    cycled = val[: search.observation_batches]
    truth = []
    for subset in subsets:
        losses = [loop.observe(model, task, b, subset, "eval") * len(b["targets"]) for b in val]
        truth.append(sum(losses) / sum(len(b["targets"]) for b in val))
    torch.manual_seed(0)
    reference = [[loop.observe(model, task, val[0], s, "train") for s in subsets] for _ in range(args.repeats)]
    held_out = [[loop.observe(model, task, b, s, "eval") for s in subsets] for b in cycled]

    def report(name: str, observations: list[list[float]]) -> float:
        taus = [kendall_tau(scores, truth) for scores in observations]
        mean_scores = [statistics.mean(col) for col in zip(*observations)]
        print(f"{name:<34} single-observation tau {statistics.mean(taus):+.3f} (range {min(taus):+.3f}..{max(taus):+.3f}), "
              f"tau of their mean {kendall_tau(mean_scores, truth):+.3f}")
        return statistics.mean(taus)

    print(f"easyvqa_minilm after its warm-up epoch: {len(subsets)} subsets of {parts.space.num_skip}, "
          f"truth = eval loss on {sum(len(b['targets']) for b in val)} val questions")
    ref = report(f"reference (train, batch 0, x{args.repeats})", reference)
    held = report(f"held_out (eval, {len(cycled)} cycled batches)", held_out)
    print(f"single-observation tau, held_out / reference: {held / ref:.2f}")


if __name__ == "__main__":
    main()
