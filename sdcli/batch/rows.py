"""`sdcli batch` input: reading FILE (.txt, .jsonl, .csv or standard input) into rows, and
checking one row into a Job: its settings, seed, safe output name and settings key.

See sdcli/batch/run.py for how rows are run, written and resumed.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
import sys
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from sdcli.batch import controlnet_rows
from sdcli.batch.hires_rows import HIRES_FIELDS, hires_fix, key_settings
from sdcli.engine.prompt_syntax import MAX_WEIGHT, weight_out_of_range
from sdcli.engine.request import GUIDANCE_MAX, SEED_MAX, STEPS_MAX
from sdcli.schedulers import scheduler_names
from sdcli.util.errors import SdcliError, UsageError

ROW_FIELDS = (
    "prompt", "negative_prompt", "seed", "steps", "guidance_scale", "width", "height",
    "scheduler", "init_image", "strength", "name", "guidance_rescale", "reference_images",
    *HIRES_FIELDS,  # the hires fix (hires_rows.py)
    *controlnet_rows.CONTROL_FIELDS,  # ControlNet units (controlnet_rows.py)
)
FORMATS = ("txt", "jsonl", "csv")
MANIFEST = "manifest.jsonl"  # a row may not take this name
SLUG_CHARS = 40
MAX_NAME_BYTES = 200

class RowError(SdcliError):
    """A problem with one row: reported with its line number, the row is skipped."""


@dataclass
class BatchOptions:
    """The command line of `sdcli batch` (defaults for every row)."""

    file: str
    output_dir: Path
    input_format: Optional[str] = None
    model: Optional[str] = None
    negative_prompt: str = ""
    init_image: Optional[Path] = None
    reference_images: tuple = ()  # FLUX.2-klein editing: --reference-image FILE (repeatable), for every row
    strength: float = 0.8
    steps: int = 20
    guidance_scale: float = 7.5
    guidance_rescale: float = 0.0
    seed: Optional[int] = None
    width: Optional[int] = None
    height: Optional[int] = None
    scheduler: Optional[str] = None
    device: str = "CPU"
    precision: str = "auto"
    rng: str = "torch"
    quiet: bool = False
    as_json: bool = False
    debug: bool = False
    unset: tuple = ()  # of "steps", "guidance_scale", "vae": not given, so the model's own defaults apply
    vae: str = "full"  # generate's --vae, --deepcache and --clip-skip, for every row
    deepcache: int = 1
    clip_skip: int = 1
    cfg_normalization: float = 0.0  # generate's --cfg-normalization and --cfg-truncation (Z-Image), for every row
    cfg_truncation: float = 1.0
    parallel: int = 0  # rows in flight at once: 0 as many as OpenVINO finds best (throughput), 1 one at a time
    ray: Optional[str] = None  # run the rows on a Ray cluster: "auto", "local" or an address (batch_ray.py)
    ray_cpus_per_actor: Optional[int] = None  # default: one worker per node, with all its CPUs
    shared_output: bool = False  # Ray workers write into DIR themselves (DIR shared by every node)
    lora_dir: Optional[Path] = None  # generate's --lora-dir, --embeddings-dir, --allow-pickle (rows name LoRAs
    embeddings_dir: Optional[Path] = None  # in their prompts; on Ray the folders must be at the same path on
    allow_pickle: bool = False  # every node)
    hires: dict = field(default_factory=dict)  # the --hires-* options given, by row field (hires_rows.py)
    upscaler_dir: Optional[Path] = None  # where a hires_upscaler NAME is found (generate's --upscaler-dir)
    control: dict = field(default_factory=dict)  # --controlnet, --control-image, --control-*: lists, by row field
    controlnet_dir: Optional[Path] = None  # where a controlnet NAME is found (generate's --controlnet-dir)


@dataclass
class Row:
    line: int  # 1-based line of FILE where the row starts
    index: int  # 0-based among the data rows
    values: dict[str, Any] = field(default_factory=dict)
    error: Optional[str] = None  # set when the row could not even be parsed


@dataclass
class Job:
    """A valid row with every setting resolved (size may still come from the init image)."""

    line: int
    index: int
    prompt: str
    negative_prompt: str
    seed: int
    steps: int
    guidance_scale: float
    width: Optional[int]
    height: Optional[int]
    scheduler: Optional[str]
    init_image: Optional[Path]
    strength: float
    file: str  # the output's name inside DIR
    key: str = ""  # fingerprint of the settings, to tell a finished row on a re-run
    guidance_rescale: float = 0.0  # generate's --guidance-rescale
    reference_images: tuple = ()  # FLUX.2-klein editing: the reference images' paths, in order
    hires: Any = None  # the hires fix: an engine.hires.HiresFix, or None (hires_rows.py)
    controlnets: tuple = ()  # engine.controlnet.ControlUnits, their images paths (controlnet_rows.py)


# --- reading FILE ---------------------------------------------------------------------

def detect_format(file: str, given: Optional[str]) -> str:
    if given is not None:
        fmt = given.lower().lstrip(".")
        if fmt not in FORMATS:
            raise UsageError(f"--format must be one of {', '.join(FORMATS)}, got {given!r}")
        return fmt
    if file == "-":
        return "txt"
    suffix = Path(file).suffix.lower()
    fmt = {".txt": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}.get(suffix)
    if fmt is None:
        raise UsageError(
            f"cannot tell the format of {file} from its extension {suffix or '(none)'!r}: "
            "use .txt, .jsonl or .csv, or pass --format txt|jsonl|csv"
        )
    return fmt


def read_text(file: str) -> str:
    try:
        if file == "-":
            data = sys.stdin.buffer.read()
        else:
            path = Path(file)
            if not path.exists():
                raise UsageError(f"prompts file not found: {file}")
            if path.is_dir():
                raise UsageError(f"{file} is a folder, not a prompts file")
            data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {file}: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{'standard input' if file == '-' else file} is not UTF-8 text (byte {exc.start})") from None


def _lines(text: str) -> Iterator[tuple[int, str]]:
    # split on \n only: str.splitlines() would also split on U+2028 and friends inside a prompt
    for number, line in enumerate(text.split("\n"), start=1):
        yield number, line.rstrip("\r")


def parse_txt(text: str) -> list[Row]:
    rows: list[Row] = []
    for number, line in _lines(text):
        prompt = line.strip()
        if not prompt or prompt.startswith("#"):
            continue
        rows.append(Row(number, len(rows), {"prompt": prompt}))
    return rows


def parse_jsonl(text: str) -> list[Row]:
    rows: list[Row] = []
    for number, line in _lines(text):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        row = Row(number, len(rows))
        rows.append(row)
        try:
            value = json.loads(stripped)
        except json.JSONDecodeError as exc:
            row.error = f"invalid JSON ({exc.msg} at column {exc.colno})"
            continue
        if isinstance(value, str):
            value = {"prompt": value}
        if not isinstance(value, dict):
            row.error = f"expected a JSON object such as {{\"prompt\": \"...\"}}, got {type(value).__name__}"
            continue
        unknown = [k for k in value if k not in ROW_FIELDS]
        if unknown:
            row.error = f"unknown key {unknown[0]!r} (known: {', '.join(ROW_FIELDS)})"
            continue
        row.values = {k: v for k, v in value.items() if v is not None}
    return rows


def _column_name(cell: str) -> str:
    return re.sub(r"[\s-]+", "_", cell.strip().lower())


def parse_csv(text: str, source: str) -> list[Row]:
    reader = csv.reader(io.StringIO(text, newline=""))
    header: Optional[list[str]] = None
    rows: list[Row] = []
    last_line = 0
    while True:
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            if header is None:
                raise UsageError(f"{source}: cannot read the CSV header: {exc}") from None
            rows.append(Row(last_line + 1, len(rows), error=f"bad CSV: {exc}"))
            if reader.line_num == last_line:  # no progress: give up on the rest
                break
            last_line = reader.line_num
            continue
        start, last_line = last_line + 1, reader.line_num
        if not any(cell.strip() for cell in record):
            continue
        if header is None:
            header = [_column_name(c) for c in record]
            named = [c for c in header if c]
            unknown = [c for c in named if c not in ROW_FIELDS]
            if "prompt" not in named and not unknown:
                raise UsageError(f"{source}:{start}: the CSV header must name a 'prompt' column")
            if unknown:
                raise UsageError(
                    f"{source}:{start}: unknown CSV column {unknown[0]!r} in the header "
                    f"(the first line must name the columns, from: {', '.join(ROW_FIELDS)})"
                )
            if "prompt" not in named:
                raise UsageError(f"{source}:{start}: the CSV header must name a 'prompt' column")
            dup = [c for c in set(named) if named.count(c) > 1]
            if dup:
                raise UsageError(f"{source}:{start}: column {dup[0]!r} appears twice in the CSV header")
            continue
        row = Row(start, len(rows))
        rows.append(row)
        extra = [c for c in record[len(header):] if c.strip()]
        if extra:
            row.error = f"{len(record)} cells but the header names {len(header)} columns"
            continue
        for name, cell in zip(header, record):
            if name and cell.strip() != "":
                row.values[name] = cell
    if header is None:
        raise UsageError(f"{source}: empty CSV file (the first line must name the columns, e.g. prompt,seed)")
    return rows


def parse_rows(text: str, fmt: str, source: str) -> list[Row]:
    if fmt == "txt":
        return parse_txt(text)
    if fmt == "jsonl":
        return parse_jsonl(text)
    return parse_csv(text, source)


# --- checking one row -----------------------------------------------------------------

def _as_int(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool):
        raise RowError(f"{name} must be a whole number, got {json.dumps(value)}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise RowError(f"{name} must be a whole number, got {value!r}") from None
    if not isinstance(value, int):
        raise RowError(f"{name} must be a whole number, got {value!r}")
    if not low <= value <= high:
        raise RowError(f"{name} must be between {low} and {high}, got {value}")
    return value


def _as_float(value: Any, name: str, low: float, high: float) -> float:
    if isinstance(value, bool):
        raise RowError(f"{name} must be a number, got {json.dumps(value)}")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise RowError(f"{name} must be a number, got {value!r}") from None
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RowError(f"{name} must be a number, got {value!r}")
    if not low <= value <= high:
        bound = f"between {low:g} and {high:g}" if math.isfinite(high) else f"at least {low:g}"
        raise RowError(f"{name} must be {bound}, got {value:g}")
    return float(value)


def _as_text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise RowError(f"{name} must be text, got {json.dumps(value)[:60]}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, as JSON's "\ud800" gives
        raise RowError(f"{name} is not valid Unicode text (it holds a lone surrogate)") from None
    return value


def _as_size(value: Any, name: str) -> int:
    number = _as_int(value, name, 1, 2**31)
    if number % 8:
        raise RowError(f"{name} must be a positive multiple of 8, got {number}")
    return number


def slugify(text: str, limit: int = SLUG_CHARS) -> str:
    """`A Red Fox, at dawn!` -> `a-red-fox-at-dawn`: [a-z0-9-] only, at most `limit` characters."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii").lower()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text).strip("-")
    if len(slug) > limit:
        cut = slug[:limit]
        # end on a whole word when that keeps most of it
        slug = cut.rsplit("-", 1)[0] if "-" in cut[limit // 2:] and slug[limit] != "-" else cut
        slug = slug.rstrip("-")
    return slug or "image"


def safe_file_name(raw: Any) -> str:
    """A row's `name` as a plain file name inside DIR (see the module docstring); RowError if refused."""
    name = _as_text(raw, "name").strip()
    if not name:
        raise RowError("name is empty")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise RowError(f"name {name!r} contains NUL or control characters")
    if "/" in name or "\\" in name:
        raise RowError(f"name {name!r} is a path; it must be a plain file name (it is written inside the output folder)")
    if name.startswith("."):
        raise RowError(f"name {name!r} must not start with '.'")
    out = []
    for ch in name:
        if re.fullmatch(r"[A-Za-z0-9._+-]", ch):
            out.append(ch)
            continue
        folded = unicodedata.normalize("NFKD", ch).encode("ascii", "ignore").decode("ascii")
        out.append(folded if re.fullmatch(r"[A-Za-z0-9._+-]+", folded or "-") and folded else "-")
    clean = re.sub(r"-{2,}", "-", "".join(out))
    if not clean.lower().endswith(".png"):
        clean += ".png"
    stem = clean[: -len(".png")].strip("-")
    if not re.search(r"[A-Za-z0-9]", stem):
        raise RowError(f"name {name!r} has no letters or digits to make a file name of")
    clean = stem + clean[-len(".png"):]
    if len(clean.encode()) > MAX_NAME_BYTES:
        raise RowError(f"name is longer than {MAX_NAME_BYTES} characters")
    if clean.startswith(".") or os.path.basename(clean) != clean or clean.lower() == MANIFEST:
        raise RowError(f"name {name!r} cannot be used as a file name")
    return clean


def _reference_paths(value: Any, root: Path) -> tuple[Path, ...]:
    """A row's `reference_images`: a JSON list of paths, or text with the paths separated by `|`
    (a CSV cell); relative paths are FILE's folder's.  An empty list: none (not the command line's)."""
    if isinstance(value, list):
        texts = [_as_text(item, "reference_images") for item in value]
    else:
        texts = _as_text(value, "reference_images").split("|")
    if not isinstance(value, list) and not "".join(texts).strip():
        return ()
    paths = []
    for text in texts:
        if not text.strip() or "\0" in text:
            raise RowError("reference_images holds an empty path or a NUL character")
        paths.append(root / Path(text.strip()).expanduser())
    return tuple(paths)


def make_job(row: Row, opts: BatchOptions, base_seed: int, init_root: Path, model_name: str) -> Job:
    if row.error:
        raise RowError(row.error)
    v = row.values
    prompt = _as_text(v.get("prompt", ""), "prompt")
    if not prompt.strip():
        raise RowError("empty prompt")
    negative = _as_text(v["negative_prompt"], "negative_prompt") if "negative_prompt" in v else opts.negative_prompt
    for name, text in (("prompt", prompt), ("negative_prompt", negative)):
        weight = weight_out_of_range(text)
        if weight is not None:
            raise RowError(f"{name}: an emphasis weight of {weight:.6g} is beyond +-{MAX_WEIGHT:g} (nested brackets multiply)")
    seed = _as_int(v["seed"], "seed", 0, SEED_MAX) if "seed" in v else (base_seed + row.index) % 2**64
    steps = _as_int(v["steps"], "steps", 1, STEPS_MAX) if "steps" in v else opts.steps
    guidance = _as_float(v["guidance_scale"], "guidance_scale", 0.0, GUIDANCE_MAX) if "guidance_scale" in v else opts.guidance_scale
    width = _as_size(v["width"], "width") if "width" in v else opts.width
    height = _as_size(v["height"], "height") if "height" in v else opts.height
    strength = _as_float(v["strength"], "strength", 0.0, 1.0) if "strength" in v else opts.strength
    rescale = _as_float(v["guidance_rescale"], "guidance_rescale", 0.0, 1.0) if "guidance_rescale" in v \
        else opts.guidance_rescale
    scheduler = opts.scheduler
    if "scheduler" in v:
        scheduler = _as_text(v["scheduler"], "scheduler").strip()
        if scheduler not in scheduler_names():
            raise RowError(f"scheduler {scheduler!r} is not one of {', '.join(scheduler_names())}")
    init_image = opts.init_image
    if "init_image" in v:
        text = _as_text(v["init_image"], "init_image")
        if not text.strip() or "\0" in text:
            raise RowError("init_image is empty or holds a NUL character")
        init_image = init_root / Path(text).expanduser()
    references = tuple(opts.reference_images)
    if "reference_images" in v:
        references = _reference_paths(v["reference_images"], init_root)
    hires = hires_fix(v, opts, RowError)
    controlnets = controlnet_rows.control_units(v, opts, init_root, RowError)
    if init_image is not None and min(int(steps * strength), steps) < 1:
        raise RowError(f"strength {strength:g} with steps {steps} leaves no step to run; raise either")
    if "name" in v:
        file = safe_file_name(v["name"])
    else:
        file = f"{row.index:05d}-{slugify(prompt)}-{seed}.png"
    job = Job(row.line, row.index, prompt, negative, seed, steps, guidance, width, height, scheduler,
              init_image, strength, file, guidance_rescale=rescale, reference_images=references, hires=hires,
              controlnets=controlnets)
    settings = {
        "prompt": prompt, "negative_prompt": negative, "seed": seed, "steps": steps, "guidance_scale": guidance,
        "width": width, "height": height, "scheduler": scheduler,
        "init_image": str(init_image.resolve()) if init_image else None,
        "strength": strength if init_image else None, "rng": opts.rng, "model": model_name,
    }
    # settings added since keys were first made are absent at their defaults, so that rows
    # finished before keep their keys
    extra = {"guidance_rescale": rescale or None, "deepcache": opts.deepcache if opts.deepcache != 1 else None,
             "clip_skip": opts.clip_skip if opts.clip_skip != 1 else None,
             "vae": opts.vae if "vae" not in opts.unset and opts.vae != "full" else None,
             "precision": opts.precision if opts.precision != "auto" else None,
             "cfg_normalization": opts.cfg_normalization or None,
             "cfg_truncation": opts.cfg_truncation if opts.cfg_truncation != 1 else None,
             "reference_images": [str(path.resolve()) for path in references] or None,
             "hires": key_settings(hires), "controlnets": controlnet_rows.key_settings(controlnets, RowError)}
    settings.update({name: value for name, value in extra.items() if value is not None})
    job.key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    return job
