"""The progress display: on an 80-column log (CI, `2> run.log`), a phase's name stays whole beside a long
loss-and-probabilities line."""

import io

from rich.console import Console

from das_tune.progress import RichReporter


def test_a_phase_name_is_never_cut_on_a_narrow_console():
    out = io.StringIO()
    reporter = RichReporter(Console(file=out, width=80))
    reporter.phase("retrain 10/12", total=2)
    probabilities = {f"En{i}": 0.9 - i / 10 for i in range(6)}
    reporter.advance(0.0008, probabilities)
    reporter.advance(0.0007, probabilities)
    reporter.close()
    assert "retrain 10/12" in out.getvalue()
