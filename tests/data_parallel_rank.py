"""One rank of a data-parallel one-shot search in its own process, without Ray (tests only): a gloo
process group on 127.0.0.1 and the rank's code as a Ray Train worker runs it
(``data_parallel.run_rank``); rank 0 optionally SIGKILLs itself at its K-th event (``kill_worker``).

    python data_parallel_rank.py RANK WORKERS PORT FOLDER [K]
"""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

import kill_worker
import torch.distributed as dist

from das_tune.search.data_parallel import run_rank
from das_tune.spec.study import load_study_spec

# a lengthened tiny search (9 rounds of 3), accumulation windows left open at checkpoints, dropout on
OVERRIDES = {
    "tiny": True, "search.search_epochs": 3, "search.max_steps_per_epoch": 3, "search.observe_every": 1, "search.accumulate": 2,
}


def spec_for(folder: Path, workers: int):
    return load_study_spec("easyvqa_minilm", {
        **OVERRIDES, "search.workers": workers, "storage": f"sqlite:///{folder / 'das_tune.db'}", "output_dir": str(folder / "runs"),
    })


if __name__ == "__main__":
    rank, workers, port, folder = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
    if len(sys.argv) > 5 and rank == 0:
        kill_worker.install("kill", int(sys.argv[5]), None, None)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=workers, timeout=timedelta(seconds=300)
    )
    run_rank(spec_for(folder, workers), rank, workers, None)
    dist.destroy_process_group()
