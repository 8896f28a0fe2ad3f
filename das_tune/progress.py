"""Progress of long work: a rich display, or nothing at all for scripts (``--quiet``)."""

from __future__ import annotations

import sys
from collections.abc import Mapping

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Column


class Reporter:
    """Silent reporter; the base of :class:`RichReporter`."""

    def phase(self, name: str, total: int) -> None: ...

    def advance(self, loss: float | None = None, probabilities: Mapping[str, float] | None = None) -> None: ...

    def log(self, message: str) -> None: ...

    def warn(self, message: str) -> None:
        """A result the user should act on: shown even without progress (``--quiet``)."""
        print(f"warning: {message}", file=sys.stderr)

    def close(self) -> None: ...

    def __enter__(self) -> Reporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RichReporter(Reporter):
    """One bar per phase, with the loss and the current skip probabilities beside it."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]{task.description:<16}", table_column=Column(no_wrap=True, min_width=16)),  # never squeezed
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=self.console,
        )
        self.task_id = None
        self.started = False  # started at the first output: bad input stays one line on stderr

    def _start(self) -> None:
        if not self.started:
            self.progress.start()
            self.started = True

    def phase(self, name: str, total: int) -> None:
        self._start()
        if self.task_id is not None:
            self.progress.stop_task(self.task_id)
        self.task_id = self.progress.add_task(name, total=total, info="")

    def advance(self, loss: float | None = None, probabilities: Mapping[str, float] | None = None) -> None:
        info = [] if loss is None else [f"loss {loss:.4f}"]
        if probabilities:
            top = sorted(probabilities.items(), key=lambda kv: -kv[1])[:6]
            info.append("p(skip) " + " ".join(f"{k}:{v:.2f}" for k, v in top))
        self.progress.update(self.task_id, advance=1, info="  ".join(info))

    def log(self, message: str) -> None:
        self._start()
        self.progress.console.print(message)

    def warn(self, message: str) -> None:
        self._start()
        self.progress.console.print(f"[bold yellow]warning:[/] {message}", soft_wrap=True, highlight=False)

    def close(self) -> None:
        if self.started:
            self.progress.stop()


def reporter(quiet: bool, console: Console | None = None) -> Reporter:
    """Nothing with ``quiet``, else a rich display on ``console`` (the CLI's: its width is the terminal's,
    or wide enough for a whole log line when piped)."""
    return Reporter() if quiet else RichReporter(console)
