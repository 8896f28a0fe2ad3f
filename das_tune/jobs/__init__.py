"""The jobs a command runs: a run, a range of num_skip (front), target, pre-training."""
