"""Errors that mean "the user's input is wrong", and failures of a run that the CLI reports in one line."""


class UserError(ValueError):
    """Bad input (a file, a field, a name, a missing checkpoint or data folder).

    The message is complete and says what was expected; the CLI prints it on one line and exits 2.
    """


class FolderInUse(UserError):
    """A run folder locked by another live das-tune process."""


class RunFailure(RuntimeError):
    """A run that cannot give a result (e.g. its losses became NaN); the CLI prints it on one line
    and exits 1. What was saved before it stays valid."""


def shorten(text: str, limit: int = 100) -> str:
    """``text`` as a one-line message may quote it: cut to ``limit`` characters, the cut said."""
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} characters)"
