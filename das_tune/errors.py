"""Errors that mean "the user's input is wrong", as opposed to a failure during a run."""


class UserError(ValueError):
    """Bad input (a file, a field, a name, a missing checkpoint or data folder).

    The message is complete and says what was expected; the CLI prints it on one line and exits 2.
    """
