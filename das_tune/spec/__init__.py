"""Declarative study and space files: reading, validation, built-in resources."""
