"""`sdcli batch FILE --output-dir DIR --ray ADDRESS`: the rows of a batch spread over a Ray cluster.

Everything but "where a row runs" is sdcli/batch/run.py's: reading FILE, names, seeds, the lock on
DIR, the manifest and skipping on a re-run.  This module only replaces `local.run_here`:

- ADDRESS: `auto` (the cluster `ray start` made on this machine, or $RAY_ADDRESS), `local`
  (start a one-machine cluster in this process, for a quick try), `HOST:6379`, or
  `ray://HOST:10001` (Ray Client).  When this process has already called `ray.init`, that
  connection is used as is.  Ray is imported only here, and only with --ray.
- Workers: one long-lived actor per node with all its CPUs, or with --ray-cpus-per-actor N as
  many actors of N CPUs as fit on each node (pinned to it; OpenVINO then uses N threads).  Each
  holds one compiled Engine (row_runner.RowRunner) for the model folder, which must be
  readable at the same path on every node; sdcli must be installed on every node.  A worker that
  cannot open the model is reported and dropped.
- A queue: each worker is given the next row when it hands back a result (and its first one
  when its engine is ready), so fast and slow nodes both stay busy.  Init images and reference
  images are read here and sent with the row: only the model needs to be on the nodes.
- Results: the PNG bytes (with the `parameters` chunk, made by the worker) come back here and
  are written atomically into DIR; with --shared-output the worker writes into DIR itself (DIR
  must then be one shared folder at the same path on every node) and this process records the
  manifest line once it sees the file.
- A lost worker (node gone, process killed): the row it was running goes back to the front of
  the queue for another worker, at most RETRIES times, then fails; a new worker is started on
  that node while the node is alive (RESTARTS_PER_SLOT times).  When no worker is left the
  cluster is planned again (REPLANS times), else the remaining rows fail.  The batch completes.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from sdcli.batch.recording import BatchRun
from sdcli.batch.row_runner import RowRunner, generation_options
from sdcli.util.errors import SdcliError, UsageError, error_text
from sdcli.util.lru import LRUCache

RETRIES = 3  # a row whose worker is lost is tried again up to 3 times, then fails
RESTARTS_PER_SLOT = 2  # new workers on a node whose worker was lost (while the node is alive)
REPLANS = 2  # times the cluster is planned afresh when no worker is left
SHARED_FILE_WAIT = 30.0  # seconds for a worker's file to show up here (network file systems)
INSTALL_HINT = '--ray needs Ray, which is not installed: pip install "sdcli[ray]"'


def require_ray() -> None:
    """UsageError (exit 2) with the install command when Ray cannot be imported."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise UsageError(INSTALL_HINT) from None


class RowWorker:
    """The actor: one engine for its whole life; never raises from `run` (row errors come back
    as values, so that an exception always means the worker itself is gone)."""

    def __init__(self, model_dir: str, device: str, precision: str, rng: str, threads: Optional[int],
                 output_dir: Optional[str], generation: Optional[dict] = None):
        import socket

        self.node = socket.gethostname()
        self.output_dir = Path(output_dir) if output_dir else None
        self.runner: Optional[RowRunner] = None
        self.error: Optional[str] = None
        try:
            if self.output_dir is not None and not self.output_dir.is_dir():
                raise UsageError(f"--shared-output: {output_dir} is not a folder here")
            self.runner = RowRunner(Path(model_dir), device, precision, rng, threads, generation=generation)
        except Exception as exc:  # reported by ready(); the driver drops this worker
            self.error = error_text(exc)

    def ready(self) -> dict:
        return {"node": self.node, "pid": os.getpid(), "error": self.error}

    def run(self, job, image=None, references=None) -> tuple[str, Any, Optional[str]]:
        """("ok", RowOutput, None) or ("error", message, traceback)."""
        try:
            out = self.runner.run(job, image=image, references=references)
            out.worker = f"{self.node}:{os.getpid()}"
            if self.output_dir is not None:
                from sdcli.util.fsutil import atomic_write_bytes

                t0 = time.perf_counter()
                atomic_write_bytes(self.output_dir / job.file, out.png)
                fd = os.open(self.output_dir, os.O_RDONLY)
                try:
                    with contextlib.suppress(OSError):
                        os.fsync(fd)
                finally:
                    os.close(fd)
                out.timings["save"] = out.timings.get("save", 0.0) + time.perf_counter() - t0
                out.png = None
            return "ok", out, None
        except Exception as exc:
            return "error", error_text(exc), traceback.format_exc()


@dataclass
class _Slot:
    """A place for one worker: a node and a CPU count; `actor` is its current worker."""

    node_id: str
    host: str
    cpus: float
    actor: Any = None
    restarts: int = 0
    pid: int = 0


def connect(address: str, debug: bool) -> bool:
    """ray.init for --ray ADDRESS; True when this call connected (so the caller disconnects)."""
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict = {"log_to_driver": debug, "logging_level": logging.INFO if debug else logging.ERROR}
    if address == "local":
        kwargs.update(address="local", include_dashboard=False)
    else:
        kwargs["address"] = address
    # ray.init puts its own SIGTERM handler in place (sys.exit(15)); sdcli's is put back, so that a
    # terminated batch unwinds as it does without Ray (exit 143; Ray's shutdown still runs at exit)
    terminate = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    terminate = _Remembered(terminate) if callable(terminate) else terminate
    try:
        ray.init(**kwargs)
    except Exception as exc:
        text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"cannot connect to the Ray cluster at {address!r}: {text} "
                         "(start one with `ray start --head`, or try --ray local)") from None
    finally:
        if terminate is not None:
            signal.signal(signal.SIGTERM, terminate)
    return True


class _Remembered:
    """A signal handler that remembers what it raised.  Ray turns a SystemExit raised by a signal
    handler while the driver waits in ray.wait or ray.get into SystemExit(1); run_on_ray raises
    the handler's own again (sdcli's SIGTERM: exit 143).  KeyboardInterrupt comes through as it is."""

    raised: list[BaseException] = []

    def __init__(self, handler):
        self.handler = handler

    def __call__(self, signum, frame):
        try:
            self.handler(signum, frame)
        except BaseException as exc:
            _Remembered.raised.append(exc)
            raise


def plan_slots(cpus_per_actor: Optional[int]) -> list[_Slot]:
    """One slot per alive node with CPUs (all of them), or as many of `cpus_per_actor` as fit."""
    import ray

    slots = []
    for node in ray.nodes():
        cpus = float(node.get("Resources", {}).get("CPU", 0.0))
        if not node.get("Alive") or cpus <= 0:
            continue
        host = node.get("NodeManagerHostname") or node.get("NodeManagerAddress") or node["NodeID"][:8]
        if cpus_per_actor:
            slots += [_Slot(node["NodeID"], host, float(cpus_per_actor)) for _ in range(int(cpus // cpus_per_actor))]
        else:
            slots.append(_Slot(node["NodeID"], host, cpus))
    return slots


def _node_alive(node_id: str) -> bool:
    import ray

    with contextlib.suppress(Exception):
        return any(n["NodeID"] == node_id and n.get("Alive") for n in ray.nodes())
    return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0][:160] if text else "") or type(exc).__name__


def run_on_ray(run: BatchRun, worker_class: type = RowWorker) -> None:
    """batch.Runner: `run.todo` on the Ray cluster of `run.opts.ray` (see the module docstring).
    `worker_class`: RowWorker or a subclass (the tests use one that crashes on purpose)."""
    import ray

    opts = run.opts
    if opts.ray_cpus_per_actor is not None and opts.ray_cpus_per_actor < 1:
        raise UsageError(f"--ray-cpus-per-actor must be at least 1, got {opts.ray_cpus_per_actor}")
    connected = connect(opts.ray, opts.debug)
    cluster = RayRun(run, ray.remote(worker_class))
    try:
        cluster.plan()
        if not cluster.slots:
            need = f" of {opts.ray_cpus_per_actor} CPUs" if opts.ray_cpus_per_actor else ""
            raise UsageError(f"the Ray cluster at {opts.ray!r} has no room for a worker{need} (no node with enough CPUs)")
        if not (opts.quiet or opts.as_json):
            slots = cluster.slots
            nodes = len({s.node_id for s in slots})
            sizes = sorted({f"{s.cpus:g}" for s in slots})
            run.report.say(f"sdcli: Ray: {len(slots)} worker(s) of {'/'.join(sizes)} CPUs on {nodes} node(s)")
        run.report.start(len(run.todo))
        run.started = time.perf_counter()
        cluster.run_rows()
    except SystemExit:
        if _Remembered.raised:  # (Ray's SystemExit(1) in place of the signal handler's)
            raise _Remembered.raised.pop() from None
        raise
    finally:
        for slot in cluster.slots:
            cluster.drop(slot)
        if connected:
            with contextlib.suppress(Exception):
                ray.shutdown()


class RayRun:
    """The rows of one batch on the workers of a Ray cluster: a queue, the calls in flight,
    and what is done when a worker is lost (see the module docstring)."""

    def __init__(self, run: BatchRun, remote):
        opts = run.opts
        self.run = run
        self.remote = remote
        self.slots: list[_Slot] = []
        self.inflight: dict[Any, tuple[_Slot, Any]] = {}  # ObjectRef -> (slot, job or None for ready())
        self.model_dir = os.path.abspath(run.model_dir)
        self.output_dir = os.path.abspath(run.folder) if opts.shared_output else None
        self.pending = deque(run.todo)
        self.losses: dict[str, int] = {}
        self.images = LRUCache(4)
        self.ever_ready = False
        self.last_error = "no worker started"
        self.replans = 0

    def warn(self, message: str) -> None:
        if not self.run.opts.quiet:
            self.run.report.say(f"sdcli: warning: {message}")

    def start(self, slot: _Slot) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        opts = self.run.opts
        slot.actor = self.remote.options(
            num_cpus=slot.cpus, max_restarts=0, max_task_retries=0, max_concurrency=1,
            scheduling_strategy=NodeAffinitySchedulingStrategy(slot.node_id, soft=False),
        ).remote(self.model_dir, opts.device, opts.precision, opts.rng,
                 int(slot.cpus) if opts.ray_cpus_per_actor else None, self.output_dir, generation_options(opts))
        self.inflight[slot.actor.ready.remote()] = (slot, None)

    def drop(self, slot: _Slot) -> None:
        import ray

        if slot.actor is not None:
            with contextlib.suppress(Exception):
                ray.kill(slot.actor, no_restart=True)
            slot.actor = None
        for ref in [r for r, (s, _) in self.inflight.items() if s is slot]:
            del self.inflight[ref]

    def plan(self) -> None:
        self.slots[:] = plan_slots(self.run.opts.ray_cpus_per_actor)
        for slot in self.slots:
            self.start(slot)

    def hand_out(self, slot: _Slot) -> None:
        """Give `slot`'s worker the next row (its init image and reference images read here)."""
        from sdcli.imaging.image_io import read_rgb
        from sdcli.util.errors import UsageError

        while self.pending:
            job = self.pending.popleft()
            image, references = None, []
            try:
                if job.init_image:
                    image = self.images.get_or(job.init_image, lambda: read_rgb(job.init_image))
                for path in job.reference_images:
                    try:
                        references.append(self.images.get_or(path, lambda path=path: read_rgb(path)))
                    except UsageError as exc:
                        raise UsageError(f"reference_images: {exc}") from None
                if getattr(job, "controlnets", ()):  # the control images go with the row, read here
                    job = dataclasses.replace(job, controlnets=tuple(self._control_unit(unit) for unit in job.controlnets))
            except Exception as exc:
                self.run.row_failed(job, exc)
                continue
            extra = {"references": tuple(references)} if references else {}
            self.inflight[slot.actor.run.remote(job, image, **extra)] = (slot, job)
            return

    def _control_unit(self, unit):
        """`unit` with its control image read (from the images cache when read before)."""
        from sdcli.imaging.image_io import read_rgb

        return unit.read_image(lambda path: self.images.get_or(path, lambda: read_rgb(path)), "control_image")

    def lost(self, slot: _Slot, job, exc: BaseException) -> None:
        """`slot`'s worker is gone: its row goes back to the queue (RETRIES times), and a new
        worker starts on the node while it is alive (RESTARTS_PER_SLOT times)."""
        reason = _first_line(exc)
        where = f"{slot.host}" + (f" (pid {slot.pid})" if slot.pid else "")
        self.drop(slot)
        if job is not None:
            n = self.losses[job.file] = self.losses.get(job.file, 0) + 1
            if n > RETRIES:
                self.run.row_failed(job, f"its Ray worker was lost {n} times (last on {where}: {reason})")
            else:
                self.pending.appendleft(job)
        what = f"; line {job.line} goes back to the queue" if job is not None and self.losses[job.file] <= RETRIES else ""
        if slot.restarts < RESTARTS_PER_SLOT and _node_alive(slot.node_id):
            slot.restarts += 1
            self.warn(f"Ray worker on {where} was lost ({reason}){what}; starting another on that node")
            self.start(slot)
        else:
            self.slots.remove(slot)
            self.warn(f"Ray worker on {where} was lost ({reason}){what}; going on with {len(self.slots)} worker(s)")

    def no_worker_left(self) -> bool:
        """Plan the cluster again (REPLANS times); else fail the rows left.  True: go on."""
        if self.ever_ready and self.replans < REPLANS:
            self.replans += 1
            self.plan()
            if self.slots:
                self.warn(f"no Ray worker left; started {len(self.slots)} new one(s)")
                return True
        if not self.ever_ready:
            raise SdcliError(f"no Ray worker could start: {self.last_error}")
        while self.pending:
            self.run.row_failed(self.pending.popleft(), "no Ray worker left to run it")
        return False

    def run_rows(self) -> None:
        import ray
        from ray.exceptions import RayError

        opts = self.run.opts
        while self.pending or any(job is not None for _, job in self.inflight.values()):
            if not self.inflight and not self.no_worker_left():  # every worker was lost or could not start
                break
            (ref,), _ = ray.wait(list(self.inflight), num_returns=1)
            slot, job = self.inflight.pop(ref)
            try:
                value = ray.get(ref)
            except RayError as exc:  # the worker died (killed, out of memory, node gone), or RayTaskError:
                self.lost(slot, job, exc)  # ready()/run() never raise for a row, so the worker itself is broken
                continue
            if job is None:  # ready()
                slot.host, slot.pid = value["node"], value["pid"]
                if value["error"]:
                    self.last_error = f"on {slot.host}: {value['error']}"
                    self.warn(f"Ray worker {self.last_error}; not used")
                    self.drop(slot)
                    self.slots.remove(slot)
                    continue
                self.ever_ready = True
            else:
                status, payload, details = value
                if status == "ok":
                    self.run.row_done(job, payload, written_by_worker=opts.shared_output, wait_for_file=SHARED_FILE_WAIT)
                else:
                    self.run.row_failed(job, f"{payload} (on {slot.host})", details)
            self.hand_out(slot)
