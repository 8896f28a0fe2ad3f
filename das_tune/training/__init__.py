"""Training a skippable model: the trainer, the components of a study, the retrain."""
