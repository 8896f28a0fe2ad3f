"""What runs write: typed result files, atomic writes, checkpoints and the run folder."""
