"""`sdcli batch`'s rows in this process, on one engine: one after the other, or several at
once (`--parallel`) on a model compiled for throughput."""
from __future__ import annotations

import os
import threading
import time

from sdcli.batch.recording import BatchRun
from sdcli.batch.report import RowSteps
from sdcli.batch.row_runner import RowOutput, RowRunner, generation_options
from sdcli.batch.rows import Job

def run_here(run: BatchRun) -> None:
    """The rows in this process, on one engine: one after the other (`--parallel 1`), or
    several at once on a model compiled for throughput."""
    if concurrent_rows_pay(run.opts.parallel) and len(run.todo) > 1:
        run_concurrently(run)
        return
    opts, report, todo = run.opts, run.report, run.todo
    runner = RowRunner(run.model_dir, opts.device, opts.precision, opts.rng, generation=generation_options(opts))
    report.start(len(todo))
    run.started = time.perf_counter()
    for k, job in enumerate(todo):
        try:
            label = f"{job.file[:32]} ({k + 1}/{len(todo)})"
            with RowSteps(report.progress, label, enabled=report.progress is not None) as bar:
                out = runner.run(job, on_step=bar.update, release_unet=k == len(todo) - 1)
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            run.row_failed(job, exc)
            continue
        run.row_done(job, out)


# Measured (bench-results/features.json, xeon16/features.json): rows in flight at once gave
# -8% images/hour on 2 cores and +16% on 16; `auto` takes them from this many cores up.
AUTO_PARALLEL_MIN_CORES = 8


def concurrent_rows_pay(parallel: int) -> bool:
    """--parallel N > 1 always; auto (0) on machines with enough cores."""
    if parallel == 0:
        return (os.cpu_count() or 1) >= AUTO_PARALLEL_MIN_CORES
    return parallel > 1


class _Stopped(Exception):
    """Raised in a worker thread at its next step once the batch is interrupted."""


def run_concurrently(run: BatchRun) -> None:
    """Several rows in flight at once, one per OpenVINO stream (`--parallel N`, or as many
    as OpenVINO finds best for the first row's UNet with `auto`).  Workers only compute;
    this thread writes every image and manifest line, so a finished row is recorded exactly
    as in the sequential loop.  Ctrl-C/SIGTERM stop the workers at their next step."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    opts, report, todo = run.opts, run.report, run.todo
    runner = RowRunner(run.model_dir, opts.device, opts.precision, opts.rng, streams=opts.parallel or 0,
                       generation=generation_options(opts))
    workers = opts.parallel
    for job in todo[:8] if not workers else []:
        try:
            workers = runner.optimal_requests(job)
            break
        except Exception:  # noqa: BLE001 - a bad row is reported when its turn comes
            continue
    workers = max(1, min(workers, len(todo)))
    stop = threading.Event()
    report.start(len(todo))
    run.started = time.perf_counter()

    def work(k: int, job: Job) -> RowOutput:
        label = f"{job.file[:32]} ({k + 1}/{len(todo)})"
        with RowSteps(report.progress, label, enabled=report.progress is not None) as bar:
            def on_step(info):
                if stop.is_set():
                    raise _Stopped()
                bar.update(info)

            return runner.run(job, on_step=on_step)

    queue = list(enumerate(todo))[::-1]
    pending: list = []  # (future, job) in row order, not yet recorded
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sdcli-row") as pool:
        try:
            while queue or pending:
                while queue and sum(not f.done() for f, _ in pending) < workers:
                    k, job = queue.pop()
                    pending.append((pool.submit(work, k, job), job))
                busy = [f for f, _ in pending if not f.done()]
                if busy:
                    wait(busy, return_when=FIRST_COMPLETED)
                # recorded in row order, as the sequential loop does (stdout and manifest alike)
                while pending and pending[0][0].done():
                    future, job = pending.pop(0)
                    if future.exception() is None:
                        run.row_done(job, future.result())
                    else:
                        run.row_failed(job, future.exception())
        except BaseException:
            stop.set()  # the pool's exit waits for the workers, each within one step
            raise
