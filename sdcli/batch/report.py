"""`sdcli batch`'s messages and progress display on stderr (rich), kept readable together."""
from __future__ import annotations

import sys
from typing import Optional

from sdcli.util.errors import one_line
from sdcli.util.progress import StepProgress


class RowSteps(StepProgress):
    """StepProgress drawn as a second task of the batch's own progress display (rich allows
    one live display at a time)."""

    def __init__(self, shared, label: str, enabled: bool):
        super().__init__(label, enabled)
        self._shared = shared

    def _start(self) -> None:
        if self.enabled and self._progress is None and self._shared is not None:
            self._progress = self._shared
            self._task = self._shared.add_task(self.label, total=None, rate="")

    def __exit__(self, *exc) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.remove_task(self._task)


class Reporter:
    """stderr messages, kept readable while the progress display is live."""

    def __init__(self, source: str, quiet: bool, show_progress: bool, debug: bool):
        self.source = source
        self.quiet = quiet
        self.debug = debug
        self.show_progress = show_progress and sys.stderr is not None
        self.progress = None
        self.overall = None

    def say(self, message: str) -> None:
        if self.progress is not None:
            self.progress.console.print(message, markup=False, highlight=False, soft_wrap=True)
        else:
            print(message, file=sys.stderr, flush=True)

    def row_error(self, line: int, message: str) -> None:
        self.say(one_line(f"sdcli: error: {self.source}:{line}: {message}; row skipped"))

    def row_warning(self, line: int, message: str) -> None:
        if not self.quiet:
            self.say(one_line(f"sdcli: warning: {self.source}:{line}: {message}"))

    def start(self, total: int) -> None:
        if not self.show_progress or total == 0:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
            TextColumn("ETA"), TimeRemainingColumn(), console=Console(stderr=True), transient=False,
            redirect_stdout=False, redirect_stderr=False,  # stdout (paths, JSON) may be a file or a pipe
        )
        self.progress.start()
        self.overall = self.progress.add_task("batch", total=total, rate="")

    def output(self, text: str) -> None:
        """A line for stdout; drawn above the bars when stdout is that same terminal."""
        if self.progress is not None and sys.stdout is not None and sys.stdout.isatty():
            self.progress.console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            print(text, flush=True)

    def advance(self, seconds_per_image: Optional[float]) -> None:
        if self.progress is not None:
            rate = f"{seconds_per_image:.1f} s/image" if seconds_per_image else ""
            self.progress.update(self.overall, advance=1, rate=rate)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


# --- the run --------------------------------------------------------------------------
