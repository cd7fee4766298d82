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
(`BatchRun.todo`) that its caller chooses: `local.run_here` (one engine in this process, the
default) or, with --ray, `ray_runner.run_on_ray` (one worker per node of a Ray cluster).  Both
run a row with row_runner.RowRunner and give it back through `BatchRun.row_done` /
`row_failed`, which alone write images and the manifest: reading, naming, skipping and
resuming are the same either way.  (Modules: rows.py reads FILE; folder.py keeps DIR;
report.py draws progress.)
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Optional

from sdcli.batch.folder import load_manifest, locked_dir, remove_partial_files, resolve_base_seed
from sdcli.batch.local import run_here
from sdcli.batch.report import Reporter
from sdcli.batch.recording import BatchRun, Runner
from sdcli.batch.rows import BatchOptions, Job, RowError, detect_format, make_job, parse_rows, read_text
from sdcli.engine.families import family_for
from sdcli.engine.memory import require
from sdcli.engine.request import check_rng
from sdcli.imaging.image_io import read_rgb
from sdcli.model.folder import ModelFolder
from sdcli.model.hub import resolve_model
from sdcli.runtime.core import check_precision
from sdcli.util.errors import UsageError
from sdcli.util.fsutil import check_writable_dir


def run_batch(opts: BatchOptions, runner: Optional[Runner] = None) -> int:
    """Run the batch; return the exit code (0, or 1 when a row failed).  UsageError for a bad
    FILE or option (exit 2).  `runner` runs `BatchRun.todo` (default: local.run_here; with
    `opts.ray`, the caller passes ray_runner.run_on_ray)."""
    if opts.ray is not None and runner is None:
        raise ValueError("a batch with --ray needs its runner (ray_runner.run_on_ray)")
    if opts.ray is None and (opts.shared_output or opts.ray_cpus_per_actor is not None):
        raise UsageError("--shared-output and --ray-cpus-per-actor only make sense with --ray ADDRESS")
    source = "<stdin>" if opts.file == "-" else opts.file
    fmt = detect_format(opts.file, opts.input_format)
    rows = parse_rows(read_text(opts.file), fmt, source)
    opts, model_dir, model_name = check_options(opts)
    folder = Path(opts.output_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
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
        jobs, failed = make_jobs(rows, opts, base_seed, init_root, model_name, report)
        remove_partial_files(folder)
        done_before = load_manifest(folder, {job.file: job.key for job in jobs})
        todo = [j for j in jobs if not (j.file in done_before and (folder / j.file).is_file())]
        skipped = len(jobs) - len(todo)
        done = 0
        if todo:
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


def check_options(opts: BatchOptions) -> tuple[BatchOptions, Path, str]:
    """What every row shares, checked before any output: (options with the model's own
    defaults (its folder's steps, guidance and VAE, an LCM's), model folder, model name).
    UsageError for the first problem."""
    check_precision(opts.precision)
    check_rng(opts.rng)
    model_dir = resolve_model(opts.model)
    model = ModelFolder.open(model_dir)  # a broken model folder is a usage error, before any output;
    family = family_for(model)  # so is a broken tokenizer,
    few_step = family.generation_defaults(opts.scheduler)
    if few_step:  # the model's own steps and guidance (its folder's, an LCM's) where the command line gives none
        defaults = dict(zip(("steps", "guidance_scale"), few_step))
        opts = dataclasses.replace(opts, **{k: v for k, v in defaults.items() if k in opts.unset})
    if "vae" in opts.unset:  # the folder's own VAE (convert --default-vae) where --vae is not given
        opts = dataclasses.replace(opts, vae=model.default_vae)
    model.vae(opts.vae)  # an unknown --vae or a missing tiny VAE,
    init = read_rgb(opts.init_image) if opts.init_image is not None else None  # a bad global init image,
    references = []
    for path in opts.reference_images:  # or reference image,
        try:
            references.append(read_rgb(Path(path)))
        except UsageError as exc:
            raise UsageError(f"--reference-image: {exc}") from None
    request = check_family_options(family, opts, init, tuple(references))  # what the model cannot do
    # (--deepcache on a transformer, --init-image on FLUX.2-klein, the hires fix on FLUX.2-klein),
    from sdcli.batch.hires_rows import check_command_line

    check_command_line(opts, model, family)
    from sdcli.batch.controlnet_rows import check_command_line as check_controlnets

    check_controlnets(opts, model)  # (the command line's ControlNet units: found, fitting, images readable)
    if opts.width or opts.height:
        size = model.default_size  # and a size too large for this machine's memory (rows: each row)
        width, height = opts.width or size, opts.height or size
        guidance = family.classifier_free_guidance(opts.guidance_scale)
        f = model.vae_scale_factor
        require(model, width, height, device=opts.device, precision=opts.precision, guidance=guidance,
                init_image=opts.init_image is not None, images=2, vae=opts.vae, references=len(references),
                attention=family.attention_size(request.replace(width=width, height=height), guidance,
                                                (height // f, width // f)))
    return opts, model_dir, model.name


def check_family_options(family, opts: BatchOptions, init, references: tuple):
    """UsageError for a command-line option the model's family refuses whatever the row (the
    family's checks on a request of the options alone, as generate makes them); the request."""
    from sdcli.engine.request import GenerationRequest

    request = GenerationRequest(prompt="-", steps=opts.steps, guidance_scale=opts.guidance_scale,
                                guidance_rescale=opts.guidance_rescale, width=opts.width, height=opts.height,
                                scheduler=opts.scheduler, init_image=init, strength=opts.strength, vae=opts.vae,
                                deepcache=opts.deepcache, clip_skip=opts.clip_skip,
                                cfg_normalization=opts.cfg_normalization, cfg_truncation=opts.cfg_truncation,
                                reference_images=references,
                                reference_names=tuple(Path(path).name for path in opts.reference_images))
    family.check(request)
    family.make_scheduler(opts.scheduler)
    return request


def make_jobs(rows, opts: BatchOptions, base_seed: int, init_root: Path, model_name: str,
              report: Reporter) -> tuple[list[Job], int]:
    """The valid rows as jobs, and how many rows failed (each reported by its line)."""
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
    return jobs, failed
