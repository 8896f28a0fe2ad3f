"""Ask + tell time per trial of DASSampler next to TPE, at 100 and 1,000 trials of history.

Both samplers get the same history (completed trials of the meter_fusion space, added directly),
then the mean time of the next ``WINDOW`` ask+tell pairs is measured. Goal: DAS ≤ 2 ms per trial at
1,000 trials and faster than TPE. The last line is the ratio TPE / DAS at 1,000 trials.
"""

from __future__ import annotations

import time

import numpy as np
import optuna

from das_tune import load_space, make_sampler

WINDOW = 50


def history(space, n: int, seed: int = 0) -> list[optuna.trial.FrozenTrial]:
    rng = np.random.default_rng(seed)
    trials = []
    for _ in range(n):
        params = {name: float(rng.uniform()) for name in space.param_names}
        value = float(sum(int(c[2:]) for c in space.decode(params)) + rng.normal())
        trials.append(optuna.trial.create_trial(params=params, distributions=space.distributions, value=value))
    return trials


def ms_per_trial(name: str, space, past: list[optuna.trial.FrozenTrial]) -> float:
    study = optuna.create_study(sampler=make_sampler(name, space, seed=0))
    study.add_trials(past)
    start = time.perf_counter()
    for _ in range(WINDOW):
        trial = study.ask()
        skipped = space.suggest(trial)
        study.tell(trial, float(len(skipped)))
    return (time.perf_counter() - start) / WINDOW * 1e3


def main() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = load_space("meter_fusion")
    print(f"space meter_fusion: {len(space.candidates)} candidates, num_skip {space.num_skip}; mean of {WINDOW} ask+tell")
    ratio = None
    for n in (100, 1000):
        past = history(space, n)
        das, tpe = ms_per_trial("das", space, past), ms_per_trial("tpe", space, past)
        ratio = tpe / das
        print(f"{n:>5} trials: DAS {das:7.3f} ms/trial   TPE {tpe:8.3f} ms/trial   TPE/DAS {ratio:6.1f}x")
    print(f"TPE/DAS ask+tell time at 1000 trials: {ratio:.1f}x")


if __name__ == "__main__":
    main()
