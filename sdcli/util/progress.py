"""A per-image step progress bar on stderr: steps, seconds per step, ETA."""
from __future__ import annotations

import sys


class StepProgress:
    def __init__(self, label: str, enabled: bool = True):
        self.label = label
        self.enabled = enabled and sys.stderr is not None
        self._progress = None
        self._task = None

    def __enter__(self) -> "StepProgress":
        return self

    def _start(self) -> None:
        if self.enabled and self._progress is None:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(self.label, total=None, rate="")

    def update(self, info) -> None:
        """Called after every step; the bar appears with the first one."""
        self._start()
        if self._progress is None:
            return
        self._progress.update(self._task, total=info.total, completed=info.index + 1, rate=f"{info.seconds:.2f} s/step")

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()
