"""`sdcli batch`: one image per row of a prompts file, into a folder, resumably.

Input: `.txt` (one prompt a line; blank lines and `#` comments skipped), `.jsonl` (one JSON
object a line, or a bare JSON string as the prompt) or `.csv` (a header naming the columns).
JSONL and CSV rows may override any of ROW_FIELDS; a missing key, a JSON null or an empty
CSV cell means "the command-line default".  Row `index` counts the data rows (blank lines
and comments excluded, bad rows included), so fixing a bad row renumbers nothing; a row
without a seed uses `base seed + index`.  Relative `init_image` paths in rows are read
relative to FILE's folder (the current folder for standard input).

Output: `DIR/{index:05d}-{slug}-{seed}.png`, or the row's `name`.  Names are checked, never
trusted: a name that is a path (`/` or `\\`, absolute, `..`), starts with `.`, or holds NUL or
control characters is REFUSED (the row fails with a message); any other character outside
`A-Za-z0-9._+-` is SANITISED to `-` (accents folded: `Café` -> `Cafe`); `.png` is appended
when missing.  Two rows with the same output name: the later one fails.

Resuming: `DIR/manifest.jsonl` gets one JSON line per finished image, appended with
flush+fsync only after the PNG has been written atomically (and its folder fsynced).  At
start-up (under an exclusive lock on DIR) stray `.*.part` files are removed and the manifest
is rewritten atomically if it has a cut-off or invalid line, a line whose image is gone, a
duplicate, or a line whose settings differ from this run's row (that row is made again).
A row is skipped when its file is in the manifest with the same settings (`key`) and on
disk.  Without --seed the random base seed is kept in `DIR/.sdcli-batch.json`, so that a
re-run of the same command finds the same names.

Where rows run: `run_batch` does everything above and hands the rows still to do to a runner
(`BatchRun.todo`): `run_here` (one engine in this process, row after row) or, with --ray,
`batch_ray.run_on_ray` (one worker per node of a Ray cluster).  Both run a row with RowRunner
and give it back through `BatchRun.row_done` / `row_failed`, which alone write images and
the manifest: reading, naming, skipping and resuming are the same either way.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import sys
import threading
import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from sdcli.batch.rows import (
    MANIFEST,
    SEED_MAX,
    BatchOptions,
    Job,
    RowError,
    detect_format,
    make_job,
    parse_rows,
    read_text,
)
from sdcli.util.errors import SdcliError, UsageError

SEED_FILE = ".sdcli-batch.json"


# --- the output folder ----------------------------------------------------------------

@contextlib.contextmanager
def locked_dir(folder: Path) -> Iterator[int]:
    """An fd of `folder`, exclusively locked (one batch at a time writes into a folder)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # not POSIX: no lock
            pass
        except BlockingIOError:
            raise UsageError(f"another sdcli batch is writing into {folder}; wait for it or pick another --output-dir") from None
        yield fd
    finally:
        os.close(fd)


def remove_partial_files(folder: Path) -> list[str]:
    """Delete `.NAME.XXXX.part` temporaries left by an interrupted atomic write."""
    removed = []
    for entry in os.scandir(folder):
        if entry.name.startswith(".") and entry.name.endswith(".part") and entry.is_file(follow_symlinks=False):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed.append(entry.name)
    return removed


def load_manifest(folder: Path, planned: dict[str, str]) -> dict[str, dict]:
    """The manifest's entries by file, repaired: see the module docstring.  `planned`: file -> key."""
    from sdcli.util.fsutil import atomic_write_bytes

    path = folder / MANIFEST
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    dirty = bool(raw) and not raw.endswith(b"\n")
    entries: "OrderedDict[str, tuple[dict, bytes]]" = OrderedDict()
    for chunk in raw.split(b"\n"):
        if not chunk.strip():
            continue
        try:
            entry = json.loads(chunk)
            file = entry["file"]
            if not isinstance(file, str) or os.path.basename(file) != file or file.startswith("."):
                raise ValueError(file)
        except (ValueError, KeyError, TypeError):
            dirty = True  # a line cut off by a kill, or not ours
            continue
        if file in entries:
            dirty = True
            del entries[file]
        entries[file] = (entry, chunk.strip())
    for file, (entry, _) in list(entries.items()):
        stale = file in planned and entry.get("key") != planned[file]
        if stale or not (folder / file).is_file():
            dirty = True
            del entries[file]
    if dirty:
        atomic_write_bytes(path, b"".join(chunk + b"\n" for _, chunk in entries.values()))
    return {file: entry for file, (entry, _) in entries.items()}


def append_manifest(folder: Path, line: str, dir_fd: int) -> None:
    with open(folder / MANIFEST, "ab") as f:
        f.write(line.encode("utf-8") + b"\n")
        f.flush()
        os.fsync(f.fileno())
    with contextlib.suppress(OSError):
        os.fsync(dir_fd)


def resolve_base_seed(folder: Path, given: Optional[int]) -> tuple[int, bool]:
    """(base seed, whether it was kept from an earlier run into `folder`)."""
    from sdcli.util.fsutil import atomic_write_bytes

    if given is not None:
        return given, False
    path = folder / SEED_FILE
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        seed = json.loads(path.read_text())["base_seed"]
        if isinstance(seed, int) and 0 <= seed <= SEED_MAX:
            return seed, True
    seed = secrets.randbelow(2**32)
    atomic_write_bytes(path, json.dumps({"base_seed": seed}).encode() + b"\n")
    return seed, False


# --- progress -------------------------------------------------------------------------

def _step_progress_class():
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

    return RowSteps


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
        self.say(f"sdcli: error: {self.source}:{line}: {message}; row skipped")

    def row_warning(self, line: int, message: str) -> None:
        if not self.quiet:
            self.say(f"sdcli: warning: {self.source}:{line}: {message}")

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

def _error_text(exc: BaseException) -> str:
    if isinstance(exc, (SdcliError, RowError)):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


class _Cache(OrderedDict):
    """A small LRU: prompt contexts and decoded init images reused by later rows."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def get_or(self, key, make: Callable[[], Any]):
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = make()
        self[key] = value
        while len(self) > self.size:
            self.popitem(last=False)
        return value


@dataclass
class RowOutput:
    """What running one row gives back, wherever it ran: the PNG (with its `parameters` chunk) or
    None when the worker wrote it into DIR itself (--shared-output), and the manifest's facts."""

    seed: int
    width: int
    height: int
    scheduler: str
    model: str
    timings: dict[str, float]
    notes: list[str] = field(default_factory=list)  # prompt warnings (e.g. truncated to 77 tokens)
    png: Optional[bytes] = None
    worker: Optional[str] = None  # the Ray worker, "HOST:PID"; None when run here


class RowRunner:
    """A compiled engine plus small caches: runs one Job at a time.  Used by the loop here and,
    one per worker, by `sdcli batch --ray` (sdcli/batch_ray.py)."""

    def __init__(self, model_dir: Path, device: str, precision: str, rng: str, threads: Optional[int] = None,
                 streams: Optional[int] = None, generation: Optional[dict] = None):
        """`streams`: compile for throughput (see Runtime) so that several threads can run rows at once.
        `generation`: GenerationConfig fields every row shares (vae, deepcache, clip_skip)."""
        from sdcli.engine.engine import StableDiffusionEngine

        self.engine = StableDiffusionEngine(model_dir, device=device, precision=precision, streams=streams)
        if threads and device.upper() == "CPU":
            with contextlib.suppress(Exception):  # a worker of N CPUs on a bigger node uses N threads
                self.engine.runtime.core.set_property("CPU", {"INFERENCE_NUM_THREADS": int(threads)})
        self.rng = rng
        self.generation = dict(generation or {})
        self.contexts = _Cache(16)
        self.images = _Cache(4)
        self._cache_lock = threading.Lock()

    def config(self, job: Job, image: Any = None):
        """The GenerationConfig of `job` (its init image read, or taken from the cache)."""
        from sdcli.imaging.image_io import read_rgb
        from sdcli.engine.engine import GenerationConfig

        if image is None and job.init_image:
            with self._cache_lock:
                image = self.images.get_or(job.init_image, lambda: read_rgb(job.init_image))
        config = GenerationConfig(
            prompt=job.prompt, negative_prompt=job.negative_prompt, steps=job.steps,
            guidance_scale=job.guidance_scale, seed=job.seed, width=job.width, height=job.height,
            scheduler=job.scheduler, init_image=image, strength=job.strength, rng=self.rng, **self.generation,
        )
        config.validate()
        from sdcli.engine.memory import check_fits

        check_fits(self.engine, config, images=2)  # a row too large for memory fails before it compiles
        return config

    def optimal_requests(self, job: Job) -> int:
        """How many rows like `job` OpenVINO would run at once (compiles its UNet)."""
        return self.engine.optimal_requests(self.config(job))

    def run(self, job: Job, image: Any = None, on_step: Optional[Callable] = None,
            release_unet: bool = False) -> RowOutput:
        """Generate `job`; `image` is its decoded init image when the caller read it already."""
        from sdcli.cli.app import a1111_parameters
        from sdcli.imaging.image_io import encode_png

        engine = self.engine
        compile_before = sum(v for n, v in engine.timings.items() if n.startswith("compile_"))
        config = self.config(job, image)
        image = config.init_image
        engine.preload(config)  # the UNet for a new size compiles while the prompt is encoded
        guidance = engine.classifier_free_guidance(job.guidance_scale)
        t0 = time.perf_counter()
        key = (job.prompt, job.negative_prompt, guidance)
        with self._cache_lock:
            encoded_here = key not in self.contexts
            context, notes = self.contexts.get_or(
                key, lambda: engine.encode_prompt(job.prompt, job.negative_prompt, guidance,
                                                  clip_skip=config.clip_skip))
        encode_seconds = time.perf_counter() - t0
        result = engine.generate(config, on_step=on_step, context=context, release_unet=release_unet)
        t0 = time.perf_counter()
        png = encode_png(result.image, a1111_parameters(config, result, engine.folder.name, image is not None))
        encode_png_seconds = time.perf_counter() - t0
        compile_seconds = sum(v for n, v in engine.timings.items() if n.startswith("compile_")) - compile_before
        timings = {name: round(value, 4) for name, value in result.timings.items()}
        timings.update(encode_prompt=round(encode_seconds, 4) if encoded_here else 0.0,
                       compile=round(compile_seconds, 4), save=encode_png_seconds)
        return RowOutput(result.seed, result.width, result.height, result.scheduler, engine.folder.name,
                         timings, list(notes) if encoded_here else [], png)


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
        self.report.row_error(job.line, error if isinstance(error, str) else _error_text(error))
        self._advance(False)

    def row_done(self, job: Job, out: RowOutput, written_by_worker: bool = False,
                 wait_for_file: float = 0.0) -> None:
        """Record a finished row: write its PNG (OSError ends the batch: every row would fail alike),
        or with `written_by_worker` check that the worker's file is there (waiting up to
        `wait_for_file` seconds for a network file system to show it); then the manifest line."""
        from sdcli.util.fsutil import atomic_write_bytes

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
        else:
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
            "guidance_scale": job.guidance_scale, "width": out.width, "height": out.height,
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


def run_batch(opts: BatchOptions, runner: Optional[Runner] = None) -> int:
    """Run the batch; return the exit code (0, or 1 when a row failed).  UsageError for a bad
    FILE or option (exit 2).  `runner` runs `BatchRun.todo` (default: here, one row after the
    other; with `opts.ray`, on a Ray cluster)."""
    from sdcli.cli.app import find_model
    from sdcli.runtime.core import PRECISIONS

    if opts.ray is not None:
        from sdcli.batch.ray_runner import require_ray

        require_ray()  # before anything is read or written
    elif opts.shared_output or opts.ray_cpus_per_actor is not None:
        raise UsageError("--shared-output and --ray-cpus-per-actor only make sense with --ray ADDRESS")
    fmt = detect_format(opts.file, opts.input_format)
    source = "<stdin>" if opts.file == "-" else opts.file
    rows = parse_rows(read_text(opts.file), fmt, source)
    if opts.precision not in PRECISIONS:
        raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, got {opts.precision!r}")
    if opts.rng not in ("torch", "numpy"):
        raise UsageError(f"--rng must be torch or numpy, got {opts.rng!r}")
    model_dir = find_model(opts.model)
    from sdcli.model.folder import ModelFolder

    model = ModelFolder.open(model_dir)  # a broken model folder is a usage error, before any output;
    model_name = model.name
    from sdcli.engine.lcm import lcm_defaults

    few_step = lcm_defaults(model, opts.scheduler)
    if few_step:  # an LCM model's steps and guidance where the command line gives none
        defaults = dict(zip(("steps", "guidance_scale"), few_step))
        opts = dataclasses.replace(opts, **{k: v for k, v in defaults.items() if k in opts.unset})
    model.vae(opts.vae)  # an unknown --vae or a missing tiny VAE is a usage error, not one per row
    from sdcli.model.tokenizer import PromptTokenizer

    PromptTokenizer(model.root / "tokenizer")  # so is a broken tokenizer,
    if opts.init_image is not None:
        from sdcli.imaging.image_io import read_rgb

        read_rgb(opts.init_image)  # a bad global init image,
    if opts.width or opts.height:
        from sdcli.engine.memory import require

        size = model.default_size  # and a size too large for this machine's memory (rows: each row)
        require(model, opts.width or size, opts.height or size, device=opts.device, precision=opts.precision,
                guidance=opts.guidance_scale > 1.0, init_image=opts.init_image is not None, images=2, vae=opts.vae)
    folder = Path(opts.output_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        from sdcli.util.fsutil import check_writable_dir

        check_writable_dir(folder)
    except OSError as exc:
        raise UsageError(f"cannot write into --output-dir {folder}: {exc.strerror or exc}") from None

    report = Reporter(source, opts.quiet, not (opts.quiet or opts.as_json), opts.debug)
    if not rows and not opts.quiet:
        print(f"sdcli: warning: no prompts in {source}", file=sys.stderr)

    with locked_dir(folder) as dir_fd:
        base_seed, kept = resolve_base_seed(folder, opts.seed)
        if opts.seed is None and not (opts.quiet or opts.as_json):
            print(f"sdcli: seed {base_seed}" + (f" (kept from an earlier run into {folder})" if kept else ""),
                  file=sys.stderr)
        init_root = Path(".") if opts.file == "-" else Path(opts.file).parent

        failed = 0
        jobs: list[Job] = []
        used: dict[str, int] = {}
        for row in rows:
            try:
                job = make_job(row, opts, base_seed, init_root, model_name)
                other = used.get(job.file.lower())
                if other is not None:
                    raise RowError(f"output name {job.file} is already used by line {other}")
                used[job.file.lower()] = row.line
                jobs.append(job)
            except RowError as exc:
                failed += 1
                report.row_error(row.line, str(exc))

        remove_partial_files(folder)
        done_before = load_manifest(folder, {job.file: job.key for job in jobs})
        todo = [j for j in jobs if not (j.file in done_before and (folder / j.file).is_file())]
        skipped = len(jobs) - len(todo)
        done = 0
        if todo:
            if runner is None and opts.ray is not None:
                from sdcli.batch.ray_runner import run_on_ray as runner
            run = BatchRun(opts, folder, dir_fd, model_dir, model_name, base_seed, report, todo)
            try:  # the runner starts the progress display once it is ready to run rows
                (runner or run_here)(run)
            finally:
                report.stop()
            done = run.done
            failed += run.failed

    if not opts.quiet or failed:
        print(f"{done} done, {failed} failed, {skipped} skipped (already done)", file=sys.stderr, flush=True)
    return 1 if failed else 0


def run_here(run: BatchRun) -> None:
    """The rows in this process, on one engine: one after the other (`--parallel 1`), or
    several at once on a model compiled for throughput."""
    if concurrent_rows_pay(run.opts.parallel) and len(run.todo) > 1:
        run_concurrently(run)
        return
    opts, report, todo = run.opts, run.report, run.todo
    runner = RowRunner(run.model_dir, opts.device, opts.precision, opts.rng, generation=generation_options(opts))
    RowSteps = _step_progress_class()
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


def generation_options(opts: BatchOptions) -> dict:
    return {"vae": opts.vae, "deepcache": opts.deepcache, "clip_skip": opts.clip_skip}


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
    RowSteps = _step_progress_class()
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
