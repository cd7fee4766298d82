"""`sdcli bench`: sdcli against its peers on the same converted folder, offline, fairly.

Builds (once, cached) a random-weight pipeline of the SD 1.5 architecture — a step costs
what the real model's costs —, converts it with `sdcli convert`, then runs whole
processes: `sdcli generate`, openvino-genai's Text2ImagePipeline, optimum-intel's
OVStableDiffusionPipeline (in its own virtualenv: --optimum-python) and diffusers on
PyTorch, each with its best documented settings (see runners.py: static reshape, and
OpenVINO's compiled-model cache where it has one).

Two modes, reported apart:
- cold: every run with empty caches (a fresh cache folder each time): what a user sees first;
- warm: each peer's cache folder filled by two unmeasured runs first (sdcli writes its
  blobs on the second run of a size), then measured.
Rounds rotate the order of the peers (A B C, B C A, C A B, ...) so that none always runs
first.  Step time means the same for every peer: the median interval between consecutive
per-step callbacks, the first step left out.  Each run's wall time and peak RSS are
measured from outside the process.  bench.json keeps every run (mode, round, position);
bench.md and the README tables are rendered from it (medians).
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

PEERS = ("sdcli", "genai", "optimum", "diffusers")
MODES = ("cold", "warm")
PROMPT = "a photograph of an astronaut riding a horse on the moon, highly detailed"
WARM_UP_RUNS = 2


@dataclass
class Run:
    peer: str
    mode: str
    steps: int
    round: int
    position: int  # 0-based place of this run in its round's order
    wall_s: float
    peak_rss_mb: float
    returncode: int
    timings: dict = field(default_factory=dict)
    error: str = ""


def gnu_time() -> str | None:
    """The path of GNU time (Debian's package `time`), or None where there is none."""
    for candidate in (os.environ.get("SDCLI_BENCH_TIME"), shutil.which("time"), "/usr/bin/time"):
        if candidate and os.access(candidate, os.X_OK):
            try:
                version = subprocess.run([candidate, "--version"], capture_output=True, text=True, timeout=10)
            except (OSError, subprocess.SubprocessError):
                continue
            if "GNU" in version.stdout + version.stderr:
                return candidate
    return None


def tree_env(tree: Path, env: dict | None = None, **extra: str) -> dict:
    """A child process's environment: `env` (default: this process's) with `extra` set and `tree`
    first on PYTHONPATH, before what was there (so the child imports sdcli from `tree` and still
    finds packages installed beside it, as on the device machine's /tmp/site)."""
    env = dict(os.environ if env is None else env, **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(tree), env.get("PYTHONPATH", "")])
    return env


def run_measured(cmd: list[str], env: dict | None = None, timeout: float = 3600,
                 check: dict | None = None) -> tuple[float, float, int, str, str]:
    """Run `cmd`; return (wall seconds, peak RSS in MB (MiB) of that process, rc, stdout, stderr).

    `check`: where GNU time is found, the run goes through it, its figures for the same process
    are put there (wall_s, rss_mb), and the peak RSS returned is its: the kernel's high-water
    mark of a process started by fork or vfork and exec begins at its parent's RSS at the fork,
    so wait4's ru_maxrss of a child we start is at least our own RSS (about 1 GB under pytest:
    tests/test_first_run.py), while GNU time's child starts from GNU time's few MB.  Without
    it, the figure is wait4's: right whenever the run peaks above this process's RSS, as every
    model run does here (this process is a few hundred MB)."""
    time_bin = gnu_time() if check is not None else None
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err, \
            tempfile.NamedTemporaryFile("r", suffix=".time") as timed:
        if time_bin:
            cmd = [time_bin, "-f", "%e %M", "-o", timed.name, *cmd]
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        deadline = started + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
            time.sleep(0.05)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if time_bin:
            try:
                gnu_wall, gnu_kib = timed.read().split()[-2:]
                check.update(wall_s=round(float(gnu_wall), 3), rss_mb=round(int(gnu_kib) / 1024, 1))
            except ValueError:  # killed before GNU time wrote its line
                pass
        rss = check.get("rss_mb") if check else None
        return wall, usage.ru_maxrss / 1024 if rss is None else rss, proc.returncode, out.read(), err.read()


def machine_info() -> dict:
    cpu = platform.processor()
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not cpu.strip(" x86_64"):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = line
                break
    except OSError:
        pass
    import openvino

    from sdcli.runtime.core import effective_precision

    try:  # what "auto" computes in here: bf16 where the CPU has it (AMX, AVX512-BF16), else f32
        default_precision = effective_precision(openvino.Core(), "CPU", "auto")
    except RuntimeError:
        default_precision = None
    return {
        "default_precision": default_precision,
        "cpu": cpu,
        "cores": os.cpu_count(),
        "avx512_bf16": "avx512_bf16" in flags,
        "amx": "amx_bf16" in flags,
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1),
        "openvino": openvino.__version__.split("-")[0],
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
    }


ARCHS = ("sd15", "sdxl", "sd-turbo", "tiny", "tiny-sdxl", "tiny-sd-turbo")  # random_model's flags: --sd15, ...
ARCH_NAMES = {"sd15": "SD 1.5 architecture", "sdxl": "SDXL 1.0 architecture",
              "sd-turbo": "SD-Turbo architecture (SD 2.1-base)", "tiny": "tiny model",
              "tiny-sdxl": "tiny SDXL-shaped model", "tiny-sd-turbo": "tiny SD-Turbo-shaped model"}
# The random TAESD that fits each arch (random_model's flag; tiny-sdxl's VAE, TINY's, has none)
TAESD_FLAGS = {"sd15": "--taesd", "sdxl": "--taesd", "sd-turbo": "--taesd", "tiny": "--tiny-taesd",
               "tiny-sd-turbo": "--tiny-taesd"}
# The folder defaults a model's converted folder carries, so that `sdcli generate --model DIR
# --prompt X` needs no other flag: a Turbo model's one step without guidance, on its own
# scheduler (Euler, trailing timesteps)
FOLDER_DEFAULTS = {arch: ["--default-steps", "1", "--default-guidance", "0", "--scheduler", "euler",
                          "--timestep-spacing", "trailing"] for arch in ("sd-turbo", "tiny-sd-turbo")}
# ... and, where the folder gets a tiny VAE, that it decodes with it (the fastest image with no flags)
TINY_VAE_DEFAULTS = {arch: ["--default-vae", "tiny"] for arch in FOLDER_DEFAULTS}


def _build_once(path: Path, cmd: list[str]) -> Path:
    if not (path / "model_index.json").is_file() and not (path / "config.json").is_file():
        tmp = path.with_name(f".{path.name}.part")
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run([*cmd, str(tmp)], check=True, stdout=subprocess.DEVNULL)
        os.replace(tmp, path)
    return path


def ensure_models(workdir: Path, weight_format: str, log: Callable[[str], None], arch: str = "sd15",
                  tiny_vae: bool = False) -> tuple[Path, Path]:
    """The random-weight diffusers folder of `arch` (one of ARCHS) and its conversion (with the
    arch's FOLDER_DEFAULTS), built once; `tiny_vae`: the conversion has a random TAESD's
    vae_decoder_tiny/ too (added to a folder converted before without it), and the arch's
    TINY_VAE_DEFAULTS.  sdcli's runs name their VAE (peer_command), whatever the folder's default."""
    src = workdir / f"{arch}-random"
    ov_dir = workdir / f"{arch}-random-ov-{weight_format}"
    workdir.mkdir(parents=True, exist_ok=True)
    if tiny_vae and arch not in TAESD_FLAGS:
        from sdcli.util.errors import UsageError

        raise UsageError(f"--tiny-vae: no random tiny autoencoder fits --arch {arch}")
    if not (src / "model_index.json").is_file():
        log(f"building a random-weight {arch} pipeline in {src} (once)")
    _build_once(src, [sys.executable, "-m", "sdcli.convert.random_model", f"--{arch}"])
    taesd = None
    if tiny_vae and not (ov_dir / "vae_decoder_tiny").is_dir():
        taesd = _build_once(workdir / f"taesd-{arch}-random",
                            [sys.executable, "-m", "sdcli.convert.random_model", TAESD_FLAGS[arch]])
    if not (ov_dir / "model_index.json").is_file():
        log(f"converting it to {ov_dir} ({weight_format}, once)")
        subprocess.run([sys.executable, "-m", "sdcli", "convert", str(src), "--output", str(ov_dir),
                        "--weight-format", weight_format, *FOLDER_DEFAULTS.get(arch, []),
                        *(["--tiny-vae", str(taesd), *TINY_VAE_DEFAULTS.get(arch, [])] if taesd else []), "--quiet"],
                       check=True)
    elif taesd is not None:
        log(f"adding the tiny VAE to {ov_dir} (once)")
        subprocess.run([sys.executable, "-m", "sdcli", "convert", "--tiny-vae", str(taesd), "--into", str(ov_dir),
                        *TINY_VAE_DEFAULTS.get(arch, []), "--quiet"], check=True)
    return src, ov_dir


def peer_command(peer: str, src: Path, ov_dir: Path, steps: int, size: int, precision: str, out_png: Path,
                 extra: list[str], cache_dir: Path, optimum_python: str | None = None, guidance: float = 7.5,
                 tiny_vae: bool = False) -> tuple[list[str], dict]:
    """The command line of one run of `peer`, and its environment (`tiny_vae`: decode with the
    folder's TAESD, vae_decoder_tiny/)."""
    env = dict(os.environ)
    common = ["--prompt", PROMPT, "--steps", str(steps), "--seed", "42", "--guidance-scale", f"{guidance:g}"]
    if peer == "sdcli":
        env["SDCLI_CACHE_DIR"] = str(cache_dir)
        return [sys.executable, "-m", "sdcli", "generate", "--model", str(ov_dir), *common, "--scheduler", "euler",
                "--width", str(size), "--height", str(size), "--precision", precision, "--json", "--quiet",
                "--output", str(out_png), "--vae", "tiny" if tiny_vae else "full", *extra], env
    python = sys.executable
    if peer == "optimum":
        python = optimum_python or sys.executable
        env = tree_env(Path(__file__).resolve().parents[2], env)
    model = src if peer == "diffusers" else ov_dir
    cmd = [python, "-m", "sdcli.bench.runners", peer, "--model", str(model), *common, "--size", str(size),
           "--precision", "bf16" if (peer == "diffusers" and precision == "auto") else precision]
    if peer != "diffusers":
        cmd += ["--cache-dir", str(cache_dir)]
    if tiny_vae:
        cmd.append("--tiny-vae")
    return cmd, env


def step_time(steps: list[float]) -> float | None:
    """The one definition of step time: the median interval between consecutive per-step
    callbacks, the first step (which some peers' first interval stretches) left out."""
    steps = [s for s in steps if s is not None]
    if len(steps) > 1:
        steps = steps[1:]
    return statistics.median(steps) if steps else None


def normalize(peer: str, raw: dict) -> dict:
    """Per-peer timings in common names."""
    steps = raw.get("steps") or []
    if peer == "sdcli":
        denoise, unet = raw.get("denoise", 0.0), raw.get("unet", 0.0)
        return {
            "load_compile": sum(v for k, v in raw.items() if k.startswith("compile_")),
            "text_encoder": raw.get("encode_prompt"),
            "step": step_time(steps),
            "vae_decode": raw.get("decode"),
            "loop_overhead_pct": 100 * (denoise - unet) / denoise if denoise else None,
            "before_first_step_pct": 100 * raw["before_first_step"] / raw["process"] if raw.get("process") else None,
            "raw": raw,
            "n_steps": len(steps),
            "breakdown": raw.get("breakdown") or {},
        }
    return {"load_compile": raw.get("load_compile"), "text_encoder": raw.get("text_encoder"),
            "step": step_time(steps), "vae_decode": raw.get("vae_decode"), "raw": raw, "n_steps": len(steps),
            "breakdown": raw.get("breakdown") or {}}


def breakdown_medians(runs: list[Run]) -> dict:
    """The median of each stage of the runs' breakdowns (sdcli.util.breakdown's stages, the
    exit and the wall time), over the runs that have one."""
    from sdcli.util.breakdown import STAGES

    found = [r.timings.get("breakdown") for r in runs if r.timings.get("breakdown")]
    out = {}
    for key in (*STAGES, "exit", "wall", "total", "model_load_total"):
        value = median([b.get(key) for b in found])
        if value is not None:
            out[key] = value
    return out


def median(values):
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 3) if values else None


def median_row(ok: list[Run]) -> dict:
    """The medians of one (mode, steps, peer)'s successful runs: wall, peak RSS, the timings every
    peer reports, GNU time's view of the same runs and the per-stage breakdown where there are."""
    row = dict(wall_s=median([r.wall_s for r in ok]), peak_rss_mb=median([r.peak_rss_mb for r in ok]),
               load_compile_s=median([r.timings.get("load_compile") for r in ok]),
               text_encoder_s=median([r.timings.get("text_encoder") for r in ok]),
               step_s=median([r.timings.get("step") for r in ok]),
               vae_decode_s=median([r.timings.get("vae_decode") for r in ok]),
               wall_range_s=[min(r.wall_s for r in ok), max(r.wall_s for r in ok)])
    checked = [r.timings["gnu_time"] for r in ok if r.timings.get("gnu_time")]
    if checked:  # the same runs as GNU time saw them
        row.update(gnu_time_wall_s=median([c.get("wall_s") for c in checked]),
                   gnu_time_rss_mb=median([c.get("rss_mb") for c in checked]))
    breakdown = breakdown_medians(ok)
    if breakdown:
        row["breakdown_s"] = breakdown
    return row


def summarize(runs: list[Run]) -> list[dict]:
    """Medians per (mode, steps, peer), with sdcli's ratios to each peer."""
    rows = []
    keys = sorted({(r.mode, r.steps, r.peer) for r in runs},
                  key=lambda k: (MODES.index(k[0]), k[1], PEERS.index(k[2])))
    for mode, steps, peer in keys:
        mine = [r for r in runs if (r.mode, r.steps, r.peer) == (mode, steps, peer)]
        ok = [r for r in mine if r.returncode == 0]
        row = {"mode": mode, "steps": steps, "peer": peer, "runs": len(ok)}
        if not ok:
            rows.append({**row, "error": next((r.error for r in mine if r.error), "")})
            continue
        rows.append({**row, **median_row(ok)})
    for row in rows:
        if row["peer"] != "sdcli" or not row.get("runs"):
            continue
        for other in rows:
            if (other["mode"], other["steps"]) == (row["mode"], row["steps"]) and other["peer"] != "sdcli" \
                    and other.get("runs"):
                row[f"wall_vs_{other['peer']}"] = round(row["wall_s"] / other["wall_s"], 3)
                row[f"rss_vs_{other['peer']}"] = round(row["peak_rss_mb"] / other["peak_rss_mb"], 3)
    return rows


def markdown(rows: list[dict], info: dict, size: int, precision: str, arch: str = "sd15", rounds: int = 0,
             guidance: float = 7.5, tiny_vae: bool = False) -> str:
    arch_name = ARCH_NAMES.get(arch, arch) + (", tiny VAE (TAESD) decoding" if tiny_vae else "")
    default = f" (default precision {info['default_precision']})" if info.get("default_precision") else ""
    head = (f"Machine: {info['cpu']}, {info['cores']} cores, {info['memory_gb']} GB; OpenVINO {info['openvino']}{default}; "
            f"{info['date']}. {arch_name} (random weights), {size}x{size}, Euler, CFG {guidance:g}, precision {precision}; "
            f"whole processes, medians of {rounds or 'the'} rounds in rotated order (cold: empty caches every run; "
            "warm: caches filled first). Step: median interval between per-step callbacks, the first left out."
            + (" gnu_time_*: the same runs as GNU time measured them (its %e and %M)." if any(
                row.get("gnu_time_wall_s") is not None for row in rows) else "") + "\n\n")
    cols = ["mode", "steps", "peer", "runs", "wall_s", "peak_rss_mb", "gnu_time_wall_s", "gnu_time_rss_mb",
            "load_compile_s", "text_encoder_s", "step_s", "vae_decode_s", "wall_vs_genai", "rss_vs_genai",
            "wall_vs_optimum", "rss_vs_optimum"]
    present = [c for c in cols if any(row.get(c) is not None for row in rows)]
    lines = ["| " + " | ".join(present) + " |", "|" + "---|" * len(present)]
    for row in rows:
        lines.append("| " + " | ".join("" if row.get(c) is None else str(row.get(c)) for c in present) + " |")
    return head + "\n".join(lines) + "\n" + breakdown_table(rows)


BREAKDOWN_COLUMNS = (("process_start", "process start"), ("imports", "imports"), ("model_load", "model load"),
                     ("text_encoder", "text encoder"), ("unet", "UNet"), ("steps_other", "loop rest"),
                     ("decode", "decode"), ("png_write", "PNG write"), ("other", "other"), ("exit", "exit"),
                     ("wall", "wall"), ("model_load_total", "all loading"))


def breakdown_table(rows: list[dict]) -> str:
    """The per-stage medians (seconds) of the rows that have them (sdcli.util.breakdown), or "":
    the stages from process start to exit add up to the wall time (medians each, so nearly)."""
    rows = [row for row in rows if row.get("breakdown_s")]
    if not rows:
        return ""
    present = [(k, name) for k, name in BREAKDOWN_COLUMNS if any(k in row["breakdown_s"] for row in rows)]
    lines = ["", "Where each process's time goes (seconds, medians; the stages from process start to exit add up to "
             "the wall time; model load is the main thread's wait for its models to load or compile, all loading "
             "is all of it, partly hidden behind the text encoder; \"exit\" is the wall time measured outside after "
             "the run's last report):", "",
             "| mode | steps | peer | " + " | ".join(name for _, name in present) + " |",
             "|" + "---|" * (3 + len(present))]
    for row in rows:
        b = row["breakdown_s"]
        lines.append(f"| {row['mode']} | {row['steps']} | {row['peer']} | "
                     + " | ".join("" if b.get(k) is None else str(b[k]) for k, _ in present) + " |")
    return "\n".join(lines) + "\n"


def _measure(peer: str, mode: str, cmd: list[str], env: dict) -> tuple[float, float, int, dict, str]:
    from sdcli.util.breakdown import with_exit

    check: dict = {}
    wall, rss, rc, out, err = run_measured(cmd, env, check=check)
    timings, error = {}, ""
    if rc == 0:
        try:
            data = json.loads(out.strip().splitlines()[-1])
            timings = normalize(peer, data["timings"] if peer == "sdcli" else data)
            if timings.get("breakdown"):
                timings["breakdown"] = with_exit(timings["breakdown"], wall)
        except (ValueError, IndexError, KeyError):
            error = "no JSON from the run"
    else:
        error = (err.strip().splitlines() or ["?"])[-1][:300]
    if check:
        timings["gnu_time"] = check
    return wall, rss, rc, timings, error


def run_bench(workdir: Path, output_dir: Path, steps_list: list[int], rounds: int, peers: list[str], size: int,
              precision: str, weight_format: str, sdcli_args: list[str], log: Callable[[str], None],
              arch: str = "sd15", modes: tuple[str, ...] = MODES, optimum_python: str | None = None,
              guidance: float = 7.5, tiny_vae: bool = False) -> list[dict]:
    src, ov_dir = ensure_models(workdir, weight_format, log, arch, tiny_vae)
    info = machine_info()
    runs: list[Run] = []
    output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        warm_caches = {peer: tmp / f"warm-{peer}" for peer in peers}
        for mode in modes:
            if mode == "warm":
                for peer in peers:
                    for steps in steps_list[:1]:
                        for _ in range(WARM_UP_RUNS):
                            cmd, env = peer_command(peer, src, ov_dir, steps, size, precision, tmp / f"{peer}.png",
                                                    sdcli_args, warm_caches[peer], optimum_python, guidance, tiny_vae)
                            log(f"warm-up {peer}")
                            run_measured(cmd, env)
            for rnd in range(rounds):
                order = peers[rnd % len(peers):] + peers[:rnd % len(peers)]
                for steps in steps_list:
                    for position, peer in enumerate(order):
                        cache = warm_caches[peer] if mode == "warm" else tmp / f"cold-{peer}-{rnd}-{steps}"
                        cmd, env = peer_command(peer, src, ov_dir, steps, size, precision, tmp / f"{peer}.png",
                                                sdcli_args, cache, optimum_python, guidance, tiny_vae)
                        wall, rss, rc, timings, error = _measure(peer, mode, cmd, env)
                        if mode == "cold":
                            shutil.rmtree(cache, ignore_errors=True)
                        runs.append(Run(peer, mode, steps, rnd, position, round(wall, 3), round(rss, 1), rc, timings,
                                        error))
                        log(f"{mode} round {rnd + 1}/{rounds} {steps:>3} steps {peer:<9} {wall:8.1f} s  {rss:8.0f} MB"
                            + (f"  FAILED: {error}" if rc else ""))
    report = {"machine": info, "arch": arch, "size": size, "precision": precision, "weight_format": weight_format,
              "prompt": PROMPT, "scheduler": "euler", "guidance_scale": guidance, "tiny_vae": tiny_vae,
              "sdcli_args": sdcli_args,
              "rounds": rounds, "modes": list(modes)}
    runs += earlier_runs(output_dir / "bench.json", report, modes, peers)
    rows = summarize(runs)
    report.update(modes=sorted({r.mode for r in runs}, key=MODES.index), summary=rows, runs=[r.__dict__ for r in runs])
    from sdcli.util.fsutil import atomic_write_bytes

    atomic_write_bytes(output_dir / "bench.json", json.dumps(report, indent=1).encode())
    table = markdown(rows, info, size, precision, arch, rounds, guidance, tiny_vae)
    atomic_write_bytes(output_dir / "bench.md", table.encode())
    return rows


def earlier_runs(path: Path, report: dict, modes: tuple[str, ...], peers: Sequence[str] | None = None) -> list[Run]:
    """The runs in an earlier bench.json of the same machine and settings that this invocation does not
    measure again: other modes, or (given `peers`) other peers (cold and warm, or a second peer row, may be
    measured by separate invocations, e.g. within a time limit)."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    same = all(old.get(k, d) == report.get(k, d) for k, d in (("arch", None), ("size", None), ("precision", None),
                                                               ("weight_format", None), ("sdcli_args", None),
                                                               ("guidance_scale", 7.5), ("tiny_vae", False),
                                                               ("bench", None), ("steps", None))) \
        and old.get("machine", {}).get("cpu") == report["machine"]["cpu"] \
        and old.get("machine", {}).get("cores") == report["machine"]["cores"]
    if not same:
        return []
    again = set(peers) if peers is not None else None
    return [Run(**r) for r in old.get("runs", []) if r.get("mode") in MODES
            and not (r.get("mode") in modes and (again is None or r.get("peer") in again))]


README_START = "<!-- bench:{name}:start -->"
README_END = "<!-- bench:{name}:end -->"


def update_readme(readme: Path, report_json: Path, name: str) -> None:
    """Replace the README block between the bench markers called `name` with the table
    rendered from `report_json` (what `sdcli bench` wrote)."""
    def render(report: dict) -> str:
        return markdown(report["summary"], report["machine"], report["size"], report["precision"],
                        report.get("arch", "sd15"), report.get("rounds", 0), report.get("guidance_scale", 7.5),
                        report.get("tiny_vae", False))

    replace_block(readme, name, render_report(report_json, render))


def render_report(report_json: Path, render: Callable[[dict], str]) -> str:
    """`render` of the report in `report_json`; UsageError for a file that is not a report
    that sdcli's benchmark wrote (--no-run reads any file it is pointed at)."""
    from sdcli.util.errors import UsageError, error_text

    try:
        return render(json.loads(report_json.read_text()))
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:  # UnicodeDecodeError is a ValueError
        raise UsageError(f"{report_json} is not a report of sdcli's benchmark ({error_text(exc)})") from None


def replace_block(readme: Path, name: str, table: str) -> None:
    """Put `table` between the README's <!-- bench:NAME:start/end --> markers."""
    from sdcli.util.errors import UsageError

    try:
        text = readme.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{readme} is not UTF-8 text") from None
    start, end = README_START.format(name=name), README_END.format(name=name)
    if start not in text or end not in text:
        raise UsageError(f"{readme} has no {start} ... {end} block")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    from sdcli.util.fsutil import atomic_write_bytes

    atomic_write_bytes(readme, (head + start + "\n" + table + end + tail).encode())
