"""Optuna storages: one opener for every URL, and the per-study lease."""
