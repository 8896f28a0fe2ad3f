"""A worker process for the sampler tests: runs DAS trials of a fixed objective on a storage."""

import sys

import optuna

from das_tune import DASSampler, SkipSpace

SPACE = SkipSpace(candidates=[f"En{i}" for i in range(6)], num_skip=2)


def objective(trial: optuna.Trial) -> float:
    skipped = SPACE.suggest(trial)
    return 0.3 * sum(int(name[2:]) for name in skipped)  # skipping early layers is best


if __name__ == "__main__":
    storage, name, n_trials, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=storage, sampler=DASSampler(SPACE, seed=seed), load_if_exists=True)
    study.optimize(objective, n_trials=n_trials)
