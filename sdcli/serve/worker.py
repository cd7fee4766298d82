"""One engine, kept compiled between requests, and the jobs that use it: run one at a time,
in order, by one thread, from a bounded queue (a full queue is refused at once).

A job is a txt2img/img2img request (a1111.Plan) or a model switch.  The running job's progress
(A1111's shared.state: job_count, job_no, sampling_step, ...) is kept here for
GET /sdapi/v1/progress, with a preview of the running image decoded by the model's tiny VAE
when a client asked for one since the last step.  Interrupting or skipping raises inside the
engine's per-step callback: the image being made is decoded as it stands (as A1111 does), and
the job returns what it has.
"""
from __future__ import annotations

import gc
import queue
import sys
import threading
import time
import traceback
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from sdcli.engine.request import GenerationRequest
from sdcli.serve.a1111 import Options, Plan
from sdcli.util.errors import SdcliError, UsageError, error_text, is_run_failure


class QueueFull(SdcliError):
    """Answered 503 at once."""


class ServerStopping(SdcliError):
    """The server is shutting down (503)."""


class ModelNotFound(UsageError):
    """A title that is not in the list of models (404)."""


class Stop(Exception):
    """Raised in the per-step callback to end the image being made ("interrupt", "skip" or
    "shutdown")."""

    def __init__(self, why: str):
        super().__init__(why)
        self.why = why


@dataclass(frozen=True)
class ModelEntry:
    title: str
    path: Path


class ModelRegistry:
    """The models a request may name, by title (the folder's name): the converted folders under
    `models_dir`, and the server's --model.  A title is looked up in this list only: a request
    never names a path."""

    def __init__(self, models_dir: Path | None, model: Path | None = None):
        self.models_dir = models_dir
        self.model = model
        self._entries: list[ModelEntry] = []
        self.refresh()

    def refresh(self) -> None:
        entries: dict[str, ModelEntry] = {}
        if self.model is not None:
            entries[self.model.resolve().name] = ModelEntry(self.model.resolve().name, self.model)
        if self.models_dir is not None and self.models_dir.is_dir():
            for index in sorted(self.models_dir.glob("*/model_index.json")):
                folder = index.parent
                entries.setdefault(folder.resolve().name, ModelEntry(folder.resolve().name, folder))
        self._entries = list(entries.values())

    def entries(self) -> list[ModelEntry]:
        return list(self._entries)

    def find(self, title: str) -> ModelEntry:
        for entry in self._entries:
            if title == entry.title:
                return entry
        self.refresh()  # a folder added since (A1111 refreshes too)
        for entry in self._entries:
            if title == entry.title:
                return entry
        raise ModelNotFound(f"model {title!r} not found: GET /sdapi/v1/sd-models lists the titles")


@dataclass
class State:
    """What GET /sdapi/v1/progress reports (A1111's shared.state)."""

    job: str = ""
    job_count: int = 0
    job_no: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0
    job_timestamp: str = "0"
    started: float = 0.0
    interrupted: bool = False
    skipped: bool = False
    stopping: bool = False
    textinfo: str | None = None
    preview: str | None = None  # base64 PNG of the running image
    preview_step: int = -1
    preview_wanted: bool = False


@dataclass
class Job:
    kind: str  # "txt2img", "img2img" or "switch"
    plan: Plan | None = None
    title: str | None = None  # the model to switch to
    future: Future = field(default_factory=Future)
    on_step: Callable | None = None  # (image index, image count, StepInfo) after each denoising step (MCP's progress)


@dataclass
class Made:
    """What a generation job made: (request, result, parameters text, PNG bytes) per image."""

    images: list[tuple]
    title: str
    interrupted: bool
    notes: list[str]


class Worker:
    """The engine and the job queue (one thread)."""

    def __init__(self, registry: ModelRegistry, model: str | None, queue_size: int = 32,
                 make_engine: Callable[[Path], object] | None = None, precision: str = "auto",
                 networks=None, device: str = "CPU"):
        """`networks`: where prompts' LoRAs and embeddings are found (an engine.networks.NetworkFolders;
        None: the environment's, else A1111's folders)."""
        self.registry = registry
        self.networks = networks
        self.selected = model  # the model requests use unless they override it (A1111's option)
        self.options = Options()
        self.precision = precision
        self.engine = None
        self.loaded: str | None = None
        self.state = State()
        self._make_engine = make_engine or _default_engine(precision, networks, device)
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="sdcli-serve-worker", daemon=True)
        self._stopping = False

    # -- the API side ---------------------------------------------------------------------
    def start(self, warm_up: bool = True) -> None:
        if warm_up and self.selected is not None:
            self._queue.put_nowait(Job("switch", title=self.selected))
        self._thread.start()

    def submit(self, job: Job) -> Future:
        """Queue `job` (QueueFull when queue_size jobs already wait; ServerStopping)."""
        if self._stopping:
            raise ServerStopping("the server is shutting down")
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFull(f"{self._queue.maxsize} requests are already waiting: try again later") from None
        return job.future

    def queued(self) -> int:
        return self._queue.qsize()

    def interrupt(self) -> None:
        with self._lock:
            if self.state.job_count:
                self.state.interrupted = True

    def skip(self) -> None:
        with self._lock:
            if self.state.job_count:
                self.state.skipped = True

    def progress(self, want_image: bool) -> dict:
        """A1111's progress response."""
        with self._lock:
            s = self.state
            if want_image and s.job_count:
                s.preview_wanted = True
            state = {"skipped": s.skipped, "interrupted": s.interrupted, "stopping_generation": s.stopping,
                     "job": s.job, "job_count": s.job_count, "job_timestamp": s.job_timestamp, "job_no": s.job_no,
                     "sampling_step": s.sampling_step, "sampling_steps": s.sampling_steps, "queued": self.queued()}
            if not s.job_count:
                return {"progress": 0.0, "eta_relative": 0.0, "state": state, "current_image": None,
                        "textinfo": s.textinfo}
            progress = 0.01 + s.job_no / s.job_count
            if s.sampling_steps:
                progress += s.sampling_step / s.sampling_steps / s.job_count
            elapsed = time.time() - s.started
            eta = elapsed / progress - elapsed
            return {"progress": min(progress, 1.0), "eta_relative": max(eta, 0.0), "state": state,
                    "current_image": s.preview if want_image else None, "textinfo": s.textinfo}

    def stop(self) -> None:
        """Shut down: the running job stops within a step (returning what it made), the
        waiting ones are answered 503, the thread ends."""
        self._stopping = True
        with self._lock:
            self.state.stopping = True
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None and not job.future.done():
                job.future.set_exception(ServerStopping("the server is shutting down"))
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass

    def join(self, timeout: float | None = None) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    # -- the worker thread ----------------------------------------------------------------
    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None or self._stopping and job.kind == "switch":
                if job is not None and not job.future.done():
                    job.future.set_exception(ServerStopping("the server is shutting down"))
                if job is None:
                    return
                continue
            if job.future.set_running_or_notify_cancel():
                try:
                    job.future.set_result(self._switch(job.title, warm_up=True) if job.kind == "switch"
                                          else self._generate(job))
                except BaseException as exc:  # answered to the request that asked
                    if not is_run_failure(exc):
                        traceback.print_exception(exc, file=sys.stderr)
                    elif job.kind == "switch":
                        print(f"sdcli: serve: cannot load {job.title}: {error_text(exc)}", file=sys.stderr)
                    job.future.set_exception(exc)
                finally:
                    self._end()

    def _switch(self, title: str | None, warm_up: bool = False):
        """The engine for model `title` (the selected one when None), loaded if it is not: the
        old engine is freed first."""
        title = title or self.selected
        if title is None:
            raise ModelNotFound("no model is selected: set sd_model_checkpoint (POST /sdapi/v1/options)")
        if self.engine is not None and self.loaded == title:
            return self.engine
        entry = self.registry.find(title)
        previous = self.loaded
        self.engine, self.loaded = None, None
        gc.collect()  # the old model's compiled components go before the new one loads
        try:
            self.engine, self.loaded = self._make_engine(entry.path), title
        except Exception:
            if previous is not None and previous != title:
                try:
                    self.engine, self.loaded = self._make_engine(self.registry.find(previous).path), previous
                except Exception:  # noqa: BLE001  (the first failure is the one to report)
                    pass
            raise
        if warm_up:
            self._warm_up(self.engine)
        return self.engine

    def _warm_up(self, engine) -> None:
        """Compile the text encoder and the UNet for the model's own size, so the first
        request does not wait for it."""
        try:
            for future in engine.preload(GenerationRequest(prompt="")):
                future.result()
        except SdcliError as exc:  # e.g. an inpainting model: it compiles with its first request
            print(f"sdcli: serve: not compiled ahead: {exc}", file=sys.stderr)

    def _begin(self, kind: str, count: int) -> None:
        with self._lock:
            self.state = State(job=f"scripts_{kind}", job_count=count, started=time.time(),
                               job_timestamp=time.strftime("%Y%m%d%H%M%S"))

    def _end(self) -> None:
        with self._lock:
            self.state = State(stopping=self._stopping)

    def _generate(self, job: Job) -> Made:
        from sdcli.engine.parameters import image_parameters
        from sdcli.imaging.image_io import encode_png

        plan = job.plan
        engine = self._switch(plan.model)
        title = self.loaded
        requests = plan.requests(engine)
        requests[0].validate()
        engine.check_fits(requests[0])  # a size that cannot fit is refused before anything runs
        self._begin(job.kind, len(requests))
        notes: list[str] = []
        images, interrupted = [], False
        for i, request in enumerate(requests):
            report = None if job.on_step is None else (lambda info, i=i: job.on_step(i, len(requests), info))
            result, stop = self._image(engine, i, request, notes, report)
            if result is not None:
                text = image_parameters(engine, request, result, self.precision)
                images.append((request, result, text, encode_png(result.image, text)))
            if stop in ("interrupt", "shutdown"):
                interrupted = True
                break
        if not plan.restore and plan.model is not None:
            self.selected = plan.model
        return Made(images, title, interrupted, notes)

    def _image(self, engine, index: int, request: GenerationRequest, notes: list[str], report=None):
        """(result or None, why it stopped or None) for image `index` of the running job
        (`report(info)` after each step)."""
        with self._lock:
            self.state.job_no, self.state.sampling_step, self.state.skipped = index, 0, False
            self.state.sampling_steps = request.steps
            self.state.textinfo = f"image {index + 1}/{self.state.job_count}"
        last: dict = {}

        def on_step(info) -> None:
            last["latents"] = info.latents
            self._stepped(engine, request, info)
            if report is not None:
                report(info)

        try:
            return engine.generate(request, on_step, on_note=notes.append), None
        except Stop as stop:
            if stop.why == "shutdown" or "latents" not in last:
                return None, stop.why
            return self._partial(engine, request, last["latents"]), stop.why

    def _stepped(self, engine, request: GenerationRequest, info) -> None:
        with self._lock:
            s = self.state
            s.sampling_step, s.sampling_steps = info.index + 1, info.total
            s.textinfo = f"image {s.job_no + 1}/{s.job_count}, step {info.index + 1}/{info.total}"
            why = "shutdown" if self._stopping else "interrupt" if s.interrupted else "skip" if s.skipped else None
            wanted = s.preview_wanted
            s.preview_wanted = False
        if why:
            raise Stop(why)
        if wanted and engine.folder.has_tiny_vae:
            preview = self._preview(engine, info.latents)
            with self._lock:
                self.state.preview, self.state.preview_step = preview, info.index + 1

    @staticmethod
    def _preview(engine, latents) -> str:
        import base64

        from sdcli.imaging.image_io import encode_png

        return base64.b64encode(encode_png(engine.decode(latents, "tiny"))).decode("ascii")

    @staticmethod
    def _partial(engine, request: GenerationRequest, latents):
        """The image being made when it was stopped, decoded as it stands (A1111's way)."""
        from sdcli.engine.engine import Result

        width, height = engine.resolve_size(request)
        scheduler = engine.family.make_scheduler(request.scheduler).name
        return Result(engine.decode(latents, request.vae), request.seed, width, height, scheduler)


def _default_engine(precision: str, networks=None, device: str = "CPU"):
    def make(path: Path):
        from sdcli.engine.engine import Engine

        # generate's settings (OpenVINO's latency hint, no streams, the same precision), so
        # the same request gives the same pixels; the text encoder stays for the next prompt
        return Engine(path, device=device, precision=precision, networks=networks)

    return make
