"""Which 2 of 6 layers can a network do without? A toy objective whose loss grows with how much the
skipped layers matter; DASSampler learns to skip the two that matter least (L1 and L4).

Run from anywhere: ``python example.py`` (loads this folder as a local OptunaHub package).
"""

from __future__ import annotations

import os

import optuna
import optunahub


IMPORTANCE = {"L0": 0.9, "L1": 0.1, "L2": 0.6, "L3": 0.8, "L4": 0.05, "L5": 0.7}

test_local = True
if test_local:
    registry_root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
    module = optunahub.load_local_module(package="samplers/das", registry_root=registry_root)
else:
    module = optunahub.load_module(package="samplers/das")

space = module.SkipSpace(candidates=list(IMPORTANCE), num_skip=2)


def objective(trial: optuna.Trial) -> float:
    skipped = space.suggest(trial)  # a frozenset of 2 layer names; also user attr "skipped"
    return sum(IMPORTANCE[layer] for layer in skipped)  # e.g. a validation loss: lower is better


optuna.logging.set_verbosity(optuna.logging.WARNING)
sampler = module.DASSampler(space, seed=0, round_size=3)
study = optuna.create_study(sampler=sampler)
study.optimize(objective, n_trials=90)

probabilities = sampler.probabilities(study)
print("p(skip):", {layer: round(p, 3) for layer, p in probabilities.items()})
print("chosen:", sorted(sampler.chosen(study)))
