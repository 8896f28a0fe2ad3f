"""A test driver: the Ray search of ``das-tune run --space minilm_vqa --tiny --executor ray`` with
its trials held on one node after their first report (``RaySearch(hold=...)``), so that
test_ray_cluster can kill that node mid-trial. Fault injection lives here, never in a run.

usage: python ray_hold_driver.py NODE_ID HOLD_FOLDER KEY=VALUE...   (study overrides)
"""

import sys

import yaml

from das_tune.progress import Reporter
from das_tune.search.prepare import prepare_search
from das_tune.search.ray_trainable import TrialHold
from das_tune.search.ray_tune import RaySearch
from das_tune.spec.study import default_study_for_space, load_study_spec
from das_tune.training.components import build_components


def main(node_id: str, folder: str, *settings: str) -> None:
    overrides = {"space": "minilm_vqa", "tiny": True, "search.executor": "ray"}
    overrides.update(dict((key, yaml.safe_load(value)) for key, value in (s.split("=", 1) for s in settings)))
    spec = load_study_spec(default_study_for_space("minilm_vqa"), overrides)
    search = prepare_search(spec, build_components(spec), reporter=Reporter())
    RaySearch(search, hold=TrialHold(node_id, folder)).run()


if __name__ == "__main__":
    main(*sys.argv[1:])
