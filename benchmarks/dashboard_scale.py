"""How optuna-dashboard copes with a paper-scale search (METER on VQAv2: ~10,000 observation trials).

Builds SQLite studies of the ``meter_global`` space (24 ``skip.*`` keys per trial, plus the user
attributes the one-shot search records), serves them in-process on loopback and times
``GET /api/studies`` and the trial list ``GET /api/studies/<id>?after=0``: a 1k- and a 10k-trial
study, the 10k one with 12 keys (``meter_fusion``) instead of 24, and the 10k one again after
``das_tune.report.dashboard.save_study_report`` saved its plots. "cold" is the first request (the trials
are read from SQLite), "warm" the median of three more (the dashboard's 10 s trial cache).

Optuna's ``add_trials`` takes ~85 ms per 24-key trial into SQLite here (one ORM round trip per
param), so one trial of each study goes through Optuna and the rest are inserted with the same
rows in bulk; the result is read back through Optuna as a check.

    python benchmarks/dashboard_scale.py [--trials 10000] [--small 1000]

Last line: the 10k-trial study's cold trial-list time ÷ the 1k-trial study's.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import optuna

from das_tune.report import dashboard
from das_tune.samplers import SAMPLER_ATTR, sampler_from_record, skip_policy
from das_tune.spec.spaces import SkipSpace, load_space

GMACS = {"FL": -1.05, "FV": -5.37, "LEn": -0.27}  # per skipped layer, paper Table A
SAMPLER = {"name": "das", "seed": 0, "round_size": 3, "lr": 1.0}


def trial_rows(space: SkipSpace, n: int, seed: int) -> list[tuple[dict[str, float], float, dict]]:
    rng = np.random.default_rng(seed)
    rows = []
    for number in range(n):
        keys = dict(zip(space.param_names, rng.random(len(space.param_names)).tolist()))
        skipped = space.ordered(space.decode(keys))
        attrs = {
            "skipped": skipped,
            "round": number // SAMPLER["round_size"],
            "phase": "search",
            "additional_gmacs": sum(GMACS[layer.rstrip("0123456789")] for layer in skipped),
            "trainable_params": 2_000_000 + int(rng.integers(0, 100_000)),
        }
        rows.append((keys, float(rng.normal(2.0 - number / n, 0.2)), attrs))
    return rows


def build_study(url: str, db: Path, name: str, space: SkipSpace, n: int) -> None:
    """Study ``name`` with ``n`` completed trials: the first through Optuna, the rest in bulk."""
    study = optuna.create_study(study_name=name, storage=url)
    study._storage.set_study_system_attr(study._study_id, SAMPLER_ATTR, SAMPLER)
    rows = trial_rows(space, n, seed=n + len(space.candidates))
    keys, value, attrs = rows[0]
    study.add_trial(optuna.trial.create_trial(params=keys, distributions=space.distributions, value=value, user_attrs=attrs))
    with sqlite3.connect(db) as con:
        study_id, start, complete = con.execute(
            "SELECT study_id, datetime_start, datetime_complete FROM trials WHERE trial_id = (SELECT max(trial_id) FROM trials)"
        ).fetchone()
        distribution = con.execute("SELECT distribution_json FROM trial_params LIMIT 1").fetchone()[0]
        first_id = con.execute("SELECT max(trial_id) FROM trials").fetchone()[0] + 1
        ids = range(first_id, first_id + n - 1)
        con.executemany(
            "INSERT INTO trials (trial_id, number, study_id, state, datetime_start, datetime_complete) VALUES (?, ?, ?, 'COMPLETE', ?, ?)",
            [(tid, number, study_id, start, complete) for tid, number in zip(ids, range(1, n))],
        )
        con.executemany(
            "INSERT INTO trial_values (trial_id, objective, value, value_type) VALUES (?, 0, ?, 'FINITE')",
            [(tid, row[1]) for tid, row in zip(ids, rows[1:])],
        )
        con.executemany(
            "INSERT INTO trial_params (trial_id, param_name, param_value, distribution_json) VALUES (?, ?, ?, ?)",
            [(tid, k, v, distribution) for tid, row in zip(ids, rows[1:]) for k, v in row[0].items()],
        )
        con.executemany(
            'INSERT INTO trial_user_attributes (trial_id, "key", value_json) VALUES (?, ?, ?)',
            [(tid, k, json.dumps(v)) for tid, row in zip(ids, rows[1:]) for k, v in row[2].items()],
        )
    last = optuna.load_study(study_name=name, storage=url).trials[-1]
    assert last.number == n - 1 and last.params == rows[-1][0] and last.user_attrs == rows[-1][2]


def timed_get(url: str) -> tuple[float, int]:
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=600) as response:
        size = len(response.read())
    return time.perf_counter() - start, size


def trial_list(base: str, study_id: int) -> tuple[float, float, int]:
    """Cold time, warm median time (s) and payload bytes of the full trial list."""
    cold, size = timed_get(f"{base}/api/studies/{study_id}?after=0")
    warm = statistics.median(timed_get(f"{base}/api/studies/{study_id}?after=0")[0] for _ in range(3))
    return cold, warm, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10_000)
    parser.add_argument("--small", type=int, default=1_000)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    global_space, fusion_space = load_space("meter_global"), load_space("meter_fusion")
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(dir=shm if shm.is_dir() else None) as tmp:
        db = Path(tmp) / "scale.db"
        url = f"sqlite:///{db}"
        studies = {
            f"{args.small} trials, 24 keys": ("global-small", global_space, args.small),
            f"{args.trials} trials, 24 keys": ("global-large", global_space, args.trials),
            f"{args.trials} trials, 12 keys": ("fusion-large", fusion_space, args.trials),
        }
        start = time.perf_counter()
        for name, space, n in studies.values():
            build_study(url, db, name, space, n)
        print(f"built {sum(n for *_, n in studies.values())} trials in {time.perf_counter() - start:.1f} s")

        server = dashboard.make_server(url, port=0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{server.server_port}"
        try:
            seconds, _ = timed_get(f"{base}/api/studies")
            ids = {s["study_name"]: s["study_id"] for s in json.load(urllib.request.urlopen(f"{base}/api/studies"))["study_summaries"]}
            print(f"GET /api/studies ({len(ids)} studies): {seconds:.3f} s")
            cold = {}
            for label, (name, space, n) in studies.items():
                cold[label], warm, size = trial_list(base, ids[name])
                print(f"GET /api/studies/<id>?after=0, {label}: cold {cold[label]:.2f} s, warm {warm:.2f} s, "
                      f"{size / 1e6:.1f} MB ({size / n:.0f} B/trial)")
            large = optuna.load_study(study_name="global-large", storage=url)
            start = time.perf_counter()
            policy = skip_policy(sampler_from_record(SAMPLER, global_space), global_space)
            dashboard.save_study_report(large, global_space, policy=policy)
            print(f"save_study_report on {args.trials} trials: {time.perf_counter() - start:.1f} s")
            time.sleep(10.5)  # let the dashboard's trial cache expire, so that this one is cold too
            report, warm, size = trial_list(base, ids["global-large"])
            print(f"GET /api/studies/<id>?after=0, {args.trials} trials, 24 keys, with the report: "
                  f"refetch {report:.2f} s, warm {warm:.2f} s, {size / 1e6:.1f} MB")
            poll, _ = timed_get(f"{base}/api/studies/{ids['global-large']}?after={args.trials - 10}")
            print(f"GET /api/studies/<id>?after={args.trials - 10} (the page's refresh): {poll:.2f} s")
        finally:
            server.shutdown()
            server.server_close()
    large_label, small_label = f"{args.trials} trials, 24 keys", f"{args.small} trials, 24 keys"
    print(f"trial-list time ratio {args.trials} / {args.small} trials (cold): {cold[large_label] / cold[small_label]:.1f}")


if __name__ == "__main__":
    main()
