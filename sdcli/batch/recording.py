"""Where a batch's finished rows go, however they were run: the PNG written atomically, the
folder fsynced, then the manifest line; counting, stdout and progress."""
from __future__ import annotations

import contextlib
import json
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from sdcli.batch.folder import append_manifest
from sdcli.batch.report import Reporter
from sdcli.batch.row_runner import RowOutput
from sdcli.batch.rows import BatchOptions, Job
from sdcli.util.errors import error_text
from sdcli.util.fsutil import atomic_write_bytes
from sdcli.util.signals import signals_held


@dataclass
class BatchRun:
    """The state every way of running rows shares: where finished rows go (PNG written atomically,
    folder fsynced, then the manifest line), counting, stdout and progress.  A runner starts the
    progress display (`report.start(len(todo))`) once it can run rows, then calls `row_done` or
    `row_failed` once per row of `todo`; the rest is the same with or without Ray."""

    opts: BatchOptions
    folder: Path
    dir_fd: int
    model_dir: Path
    model_name: str
    base_seed: int
    report: Reporter
    todo: list[Job]
    done: int = 0
    failed: int = 0
    started: float = field(default_factory=time.perf_counter)  # for the s/image rate

    def _advance(self, ok: bool) -> None:
        processed = self.done + self.failed
        self.report.advance((time.perf_counter() - self.started) / processed if ok and processed else None)

    def row_failed(self, job: Job, error: Any, details: Optional[str] = None) -> None:
        """`error`: an exception or a message.  `details`: a traceback shown with --debug."""
        if self.report.debug:
            if isinstance(error, BaseException):
                details = "".join(traceback.format_exception(error))
            if details:
                self.report.say(details.rstrip())
        self.failed += 1
        self.report.row_error(job.line, error if isinstance(error, str) else error_text(error))
        self._advance(False)

    def row_done(self, job: Job, out: RowOutput, written_by_worker: bool = False,
                 wait_for_file: float = 0.0) -> None:
        """Record a finished row: write its PNG (OSError ends the batch: every row would fail alike),
        or with `written_by_worker` check that the worker's file is there (waiting up to
        `wait_for_file` seconds for a network file system to show it); then the manifest line."""
        for note in out.notes:
            self.report.row_warning(job.line, note)
        path = self.folder / job.file
        t0 = time.perf_counter()
        if written_by_worker:
            deadline = time.monotonic() + wait_for_file
            while not path.is_file():
                if time.monotonic() >= deadline:
                    where = f" {out.worker}" if out.worker else ""
                    self.row_failed(job, f"the worker{where} wrote {job.file} but it is not in {self.folder} here "
                                         "(is --output-dir the same shared folder, at the same path, on every node?)")
                    return
                time.sleep(0.2)
        # a signal between the PNG and its manifest line would leave a finished image unrecorded
        with signals_held():
            if not written_by_worker:
                atomic_write_bytes(path, out.png)
            with contextlib.suppress(OSError):
                os.fsync(self.dir_fd)  # the rename is durable before the manifest says so
            timings = dict(out.timings)
            timings["save"] = round(timings.get("save", 0.0) + time.perf_counter() - t0, 4)
            opts = self.opts
            entry = {
                "line": job.line, "index": job.index, "file": job.file, "path": str(path),
                "prompt": job.prompt, "negative_prompt": job.negative_prompt,
                "seed": out.seed, "base_seed": self.base_seed, "steps": job.steps,
                "guidance_scale": job.guidance_scale, "guidance_rescale": job.guidance_rescale,
                "width": out.width, "height": out.height,
                "scheduler": out.scheduler,
                "init_image": str(job.init_image) if job.init_image else None,
                "strength": job.strength if job.init_image else None,
                "rng": opts.rng, "model": out.model, "device": opts.device, "precision": opts.precision,
                "key": job.key, "timings": timings,
            }
            if out.worker is not None:
                entry["worker"] = out.worker
            line = json.dumps(entry, ensure_ascii=False)
            append_manifest(self.folder, line, self.dir_fd)
        self.done += 1
        if opts.as_json:
            self.report.output(line)
        elif not opts.quiet:
            self.report.output(str(path))
        self._advance(True)


Runner = Callable[[BatchRun], None]
