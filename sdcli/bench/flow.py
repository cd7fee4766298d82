"""`sdcli bench --arch flux2-klein | z-image`: the flow-matching transformers against their peers.

The real architectures with random weights (FLUX.2-klein 4B: a 3.9 B transformer and Qwen3-4B;
Z-Image-Turbo: 6.2 B and Qwen3-4B), built once in bf16 (the real checkpoints' dtype) by
`python -m sdcli.convert.random_model --flux2-klein | --z-image` and converted once by
`sdcli convert --weight-format int8 | int4` (int4 with convert's defaults, optimum-cli's: group
size 128, ratio 1, asymmetric); the tiny-* archs are the tests' tiny models, to check the
benchmark itself.  Every peer runs the same folder with the folder's own defaults (klein: 4
steps, guidance 1; Z-Image-Turbo: 9 steps, guidance 0) unless --steps / --guidance-scale say
otherwise, the folder's scheduler (flow-matching Euler), the same prompt, seed, size and
precision:

- sdcli: `sdcli generate` (sdcli-low-memory: with --low-memory, for its peak RSS);
- genai: openvino-genai's Text2ImagePipeline with its best documented settings, a static reshape
  to the size and CACHE_DIR; genai-defaults: neither.  Both leave TaylorSeer caching as genai's
  generation config has it (off: taylorseer_config None in 2026.4) and record what it was;
- optimum: optimum-intel's OVDiffusionPipeline in its own virtualenv (--optimum-python);
  where it cannot run our folder, the failure is the row (its error in bench.json and bench.md);
- sdcli-text-encoder / genai-text-encoder: the text encoder alone in a process of its own
  (its time and memory apart): sdcli's family encoding the prompt, genai's Qwen3TextEncoder.

Whole processes, wall time and peak RSS measured from outside (GNU time where installed, as
sdcli/bench/peers.py does); cold (empty caches every run) and warm (each peer's cache filled by
unmeasured warm-up runs first); rounds rotate the order of the peers; medians.  bench.json keeps
every run and is rewritten after each one (a run cut short by a time limit keeps what it
measured); bench.md is rendered from it.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Callable

from sdcli.bench.peers import (MODES, PROMPT, Run, breakdown_table, earlier_runs, machine_info, median, median_row,
                               normalize, render_report, replace_block, run_measured, tree_env)
from sdcli.bench.rounds import table

# arch: (random_model's flag, its name in the tables, the family)
FLOW_ARCHS = {
    "flux2-klein": ("--flux2-klein", "FLUX.2-klein 4B architecture (transformer 3.9 B, Qwen3-4B)", "flux2-klein"),
    "z-image": ("--z-image", "Z-Image-Turbo architecture (transformer 6.2 B, Qwen3-4B)", "z-image"),
    "tiny-flux2-klein": ("--tiny-flux2-klein", "tiny FLUX.2-klein-shaped model", "flux2-klein"),
    "tiny-z-image": ("--tiny-z-image", "tiny Z-Image-shaped model", "z-image"),
}
FLOW_PEERS = ("sdcli", "sdcli-low-memory", "genai", "genai-defaults", "optimum")
TEXT_ENCODER_PEERS = {"sdcli": "sdcli-text-encoder", "genai": "genai-text-encoder"}
ALL_PEERS = FLOW_PEERS + tuple(TEXT_ENCODER_PEERS.values())
WEIGHT_FORMATS = ("int8", "int4", "fp16", "fp32")
# Issue 21's --low-memory targets at 1024x1024 on int4 folders (GB = 10^9 bytes, in MiB)
LOW_MEMORY_TARGETS_MB = {"flux2-klein": round(4e9 / 2**20, 1), "z-image": round(6e9 / 2**20, 1)}
# Warm-up runs before the warm rounds: sdcli writes its compiled blobs on the second run of a size
WARMED = "warmed-up"  # in a --warm-cache peer folder once its warm-ups ended
WARM_UPS = {"sdcli": 2, "sdcli-low-memory": 2, "sdcli-text-encoder": 2}


def ensure_flow_models(workdir: Path, arch: str, weight_format: str, log: Callable[[str], None]) -> tuple[Path, dict]:
    """The converted folder of `arch` at `weight_format`, built and converted once (the random
    diffusers folder only where the conversion is missing), and what building it cost here."""
    flag = FLOW_ARCHS[arch][0]
    src = workdir / f"{arch}-random"
    ov_dir = workdir / f"{arch}-random-ov-{weight_format}"
    workdir.mkdir(parents=True, exist_ok=True)
    record = workdir / f"{ov_dir.name}.made.json"  # what making it cost, kept for later reports
    if (ov_dir / "model_index.json").is_file():
        try:
            return ov_dir, json.loads(record.read_text())
        except (OSError, ValueError):
            return ov_dir, {}
    made: dict = {}
    if not (src / "model_index.json").is_file():
        log(f"building a random-weight {arch} pipeline in {src} (once)")
        made["build"] = _made(src, [sys.executable, "-m", "sdcli.convert.random_model", flag])
    log(f"converting it to {ov_dir} ({weight_format}, once)")
    made["convert"] = _made(ov_dir, [sys.executable, "-m", "sdcli", "convert", str(src), "--weight-format",
                                     weight_format, "--quiet", "--output"])
    from sdcli.util.fsutil import atomic_write_bytes

    atomic_write_bytes(record, json.dumps(made).encode())
    return ov_dir, made


def _made(path: Path, cmd: list[str]) -> dict:
    """Run `cmd` with a temporary output folder (its last argument) renamed to `path` once done:
    its wall time and peak RSS (MiB)."""
    from sdcli.util.errors import SdcliError

    tmp = path.with_name(f".{path.name}.part")
    shutil.rmtree(tmp, ignore_errors=True)
    check: dict = {}
    wall, rss, rc, _, err = run_measured([*cmd, str(tmp)], check=check)
    if rc != 0:
        raise SdcliError(f"{' '.join(cmd[1:4])} failed: {(err.strip().splitlines() or ['?'])[-1][:300]}")
    os.replace(tmp, path)
    return {"wall_s": round(wall, 1), "peak_rss_mb": round(rss, 1)}


def folder_defaults(ov_dir: Path) -> tuple[int, float]:
    """The folder's own steps and guidance (sdcli.json, written by convert)."""
    from sdcli.model.defaults import read_defaults

    defaults = read_defaults(ov_dir)
    return defaults.steps or 4, 0.0 if defaults.guidance_scale is None else defaults.guidance_scale


def flow_command(peer: str, ov_dir: Path, steps: int, guidance: float, size: int, precision: str, out_png: Path,
                 cache_dir: Path, optimum_python: str | None = None) -> tuple[list[str], dict]:
    """The command line of one run of `peer` (one of ALL_PEERS), and its environment."""
    env = dict(os.environ)
    common = ["--prompt", PROMPT, "--steps", str(steps), "--seed", "42", "--guidance-scale", f"{guidance:g}",
              "--precision", precision]
    if peer in ("sdcli", "sdcli-low-memory"):
        env["SDCLI_CACHE_DIR"] = str(cache_dir)
        return [sys.executable, "-m", "sdcli", "generate", "--model", str(ov_dir), *common, "--width", str(size),
                "--height", str(size), "--json", "--quiet", "--output", str(out_png),
                *(["--low-memory"] if peer == "sdcli-low-memory" else [])], env
    python = sys.executable
    if peer == "optimum":
        python = optimum_python or sys.executable
        env = tree_env(Path(__file__).resolve().parents[2], env)
    runner = "genai" if peer == "genai-defaults" else peer
    cmd = [python, "-m", "sdcli.bench.runners", runner, "--model", str(ov_dir), *common, "--size", str(size),
           "--own-scheduler"]
    if peer == "genai-defaults":
        cmd.append("--no-reshape")
    else:
        cmd += ["--cache-dir", str(cache_dir)]
    return cmd, env


def flow_timings(peer: str, raw: dict) -> dict:
    """One run's timings in the common names: load_compile (all model loading and compiling),
    text_encoder (the prompt's encoding, without waiting for the encoder's load), step,
    vae_decode; the text encoder's own compile where the peer reports it."""
    if peer.endswith("-text-encoder"):
        return {"load_compile": raw.get("load_compile"), "text_encoder": raw.get("text_encoder"), "raw": raw}
    out = normalize("sdcli" if peer.startswith("sdcli") else peer, raw)
    if peer.startswith("sdcli"):
        out["text_encoder"] = (raw.get("breakdown") or {}).get("text_encoder", out.get("text_encoder"))
        out["text_encoder_compile"] = raw.get("compile_text_encoder")
    if raw.get("settings"):
        out["settings"] = raw["settings"]
    return out


def measure(peer: str, cmd: list[str], env: dict) -> tuple[float, float, int, dict, str]:
    from sdcli.util.breakdown import with_exit

    check: dict = {}
    wall, rss, rc, out, err = run_measured(cmd, env, check=check)
    timings, error = {}, ""
    if rc == 0:
        try:
            data = json.loads(out.strip().splitlines()[-1])
            timings = flow_timings(peer, data["timings"] if peer in ("sdcli", "sdcli-low-memory") else data)
            if timings.get("breakdown"):
                timings["breakdown"] = with_exit(timings["breakdown"], wall)
        except (ValueError, IndexError, KeyError):
            error = "no JSON from the run"
    else:
        error = _error_line(err)
    if check:
        timings["gnu_time"] = check
    return wall, rss, rc, timings, error


def _error_line(err: str) -> str:
    """The last line of a failed run's stderr that says something (a traceback's last line)."""
    lines = [line.strip() for line in err.splitlines() if line.strip()]
    return (lines or ["?"])[-1][:400]


def summarize_flow(runs: list[Run]) -> list[dict]:
    """Medians per (mode, steps, peer); sdcli's ratios to each other full-pipeline peer."""
    rows = []
    keys = sorted({(r.mode, r.steps, r.peer) for r in runs},
                  key=lambda k: (MODES.index(k[0]), k[1], ALL_PEERS.index(k[2]) if k[2] in ALL_PEERS else 99))
    for mode, steps, peer in keys:
        mine = [r for r in runs if (r.mode, r.steps, r.peer) == (mode, steps, peer)]
        ok = [r for r in mine if r.returncode == 0 and not r.error]
        row = {"mode": mode, "steps": steps, "peer": peer, "runs": len(ok)}
        if not ok:
            rows.append({**row, "error": next((r.error for r in mine if r.error), "")})
            continue
        row.update(median_row(ok), text_encoder_compile_s=median([r.timings.get("text_encoder_compile") for r in ok]))
        settings = next((r.timings["settings"] for r in ok if r.timings.get("settings")), None)
        if settings:
            row["settings"] = settings
        rows.append(row)
    for row in rows:
        if row["peer"] not in ("sdcli", "sdcli-text-encoder") or not row.get("runs"):
            continue
        others = ("genai", "genai-defaults", "optimum") if row["peer"] == "sdcli" else ("genai-text-encoder",)
        for other in rows:
            if (other["mode"], other["steps"]) == (row["mode"], row["steps"]) and other["peer"] in others \
                    and other.get("runs"):
                name = other["peer"].replace("-text-encoder", "")
                row[f"wall_vs_{name}"] = round(row["wall_s"] / other["wall_s"], 3)
                row[f"rss_vs_{name}"] = round(row["peak_rss_mb"] / other["peak_rss_mb"], 3)
    return rows


MAIN_COLUMNS = ["mode", "steps", "peer", "runs", "wall_s", "peak_rss_mb", "gnu_time_wall_s", "gnu_time_rss_mb",
                "load_compile_s", "text_encoder_s", "text_encoder_compile_s", "step_s", "vae_decode_s",
                "wall_vs_genai", "rss_vs_genai", "wall_vs_genai-defaults", "rss_vs_genai-defaults",
                "wall_vs_optimum", "rss_vs_optimum"]
TEXT_COLUMNS = ["mode", "peer", "runs", "wall_s", "peak_rss_mb", "load_compile_s", "text_encoder_s", "wall_vs_genai",
                "rss_vs_genai"]


def flow_markdown(report: dict) -> str:
    """bench.md of a transformer bench, from its bench.json alone."""
    info, rows = report["machine"], report["summary"]
    arch = report["arch"]
    default = f" (default precision {info['default_precision']})" if info.get("default_precision") else ""
    head = (f"Machine: {info['cpu']}, {info['cores']} cores, {info['memory_gb']} GB; OpenVINO {info['openvino']}"
            f"{default}; {info['date']}. {FLOW_ARCHS.get(arch, (None, arch))[1]} (random weights), "
            f"{report['weight_format']} folder, {report['size']}x{report['size']}, guidance {report['guidance_scale']:g}, "
            f"the folder's flow-matching Euler scheduler, precision {report['precision']}; whole processes, medians "
            f"of {most_runs(report.get('runs', [])) or report.get('rounds') or 'the'} rounds in rotated order "
            "(cold: empty caches every run; warm: caches filled by unmeasured warm-up runs first). step_s: the "
            "median interval between per-step callbacks, the first left out; text_encoder_s: the prompt's "
            "encoding without the wait for the encoder's load; load_compile_s: all model loading and compiling "
            "(sdcli: the sum over its loader "
            "threads)." + (" gnu_time_*: the same runs as GNU time measured them." if any(
                row.get("gnu_time_wall_s") is not None for row in rows) else "") + "\n\n")
    full = [row for row in rows if not row["peer"].endswith("-text-encoder")]
    text = [row for row in rows if row["peer"].endswith("-text-encoder")]
    out = table(full, MAIN_COLUMNS)
    if text:
        out += ["", "The text encoder alone (Qwen3, a process that loads it and encodes the prompt once; peak RSS "
                "of that whole process):", ""] + table(text, TEXT_COLUMNS)
    out += ["", "What each peer ran with:", ""] + settings_lines(report)
    target = low_memory_line(report)
    if target:
        out += ["", target]
    built = report.get("made") or {}
    if built:
        out += ["", "Making the model on this machine (once, whole processes): " + "; ".join(
            f"{k} {v['wall_s']} s, peak RSS {v['peak_rss_mb']} MiB" for k, v in built.items())]
    # the breakdown's "UNet" stage is the denoiser's: here the transformer
    return head + "\n".join(out) + "\n" + breakdown_table(full).replace("| UNet |", "| transformer |")


PEER_TEXT = {
    "sdcli": "`sdcli generate` with the folder's scheduler",
    "sdcli-low-memory": "`sdcli generate --low-memory` (one large component in memory at a time)",
    "genai": "openvino-genai Text2ImagePipeline, its best documented settings",
    "genai-defaults": "openvino-genai Text2ImagePipeline with its defaults (no reshape, no CACHE_DIR)",
    "optimum": "optimum-intel OVDiffusionPipeline (own virtualenv), static reshape, CACHE_DIR",
    "sdcli-text-encoder": "sdcli's text encoder alone (the family's prompt encoding)",
    "genai-text-encoder": "openvino-genai Qwen3TextEncoder alone, CACHE_DIR, prompt padded to 512 tokens",
}


def settings_lines(report: dict) -> list[str]:
    """One line per peer: what it ran with (reshape, CACHE_DIR, TaylorSeer as its run reported
    them), or why it failed."""
    lines = []
    for peer in [p for p in ALL_PEERS if any(row["peer"] == p for row in report["summary"])]:
        rows = [row for row in report["summary"] if row["peer"] == peer]
        text = f"- {peer}: {PEER_TEXT.get(peer, peer)}"
        settings = next((row["settings"] for row in rows if row.get("settings")), None)
        if settings:
            parts = [f"static reshape {'yes' if settings.get('reshape') else 'no'}",
                     f"CACHE_DIR {'yes' if settings.get('cache_dir') else 'no'}"]
            if "taylorseer" in settings:
                parts.append("TaylorSeer " + ("off (generation config: none)" if settings["taylorseer"] is None
                                              else f"on ({settings['taylorseer']})"))
            if settings.get("pipeline"):
                parts.append(settings["pipeline"])
            text += "; " + ", ".join(parts)
        failed = [row for row in rows if not row.get("runs")]
        for row in failed:
            text += f"; FAILED ({row['mode']}): {row.get('error') or 'no result'}"
        lines.append(text)
    return lines


def low_memory_line(report: dict) -> str:
    """The --low-memory target's verdict where this report is the case issue 21 sets one for."""
    family = FLOW_ARCHS.get(report["arch"], (None, None, None))[2]
    rows = [row for row in report["summary"] if row["peer"] == "sdcli-low-memory" and row.get("runs")]
    if not rows:
        return ""
    peak = max(row["peak_rss_mb"] for row in rows)
    target = LOW_MEMORY_TARGETS_MB.get(family)
    applies = target and report["weight_format"] == "int4" and report["size"] == 1024 \
        and not report["arch"].startswith("tiny")
    if not applies:
        return f"sdcli --low-memory peak RSS: {peak} MiB (issue 21's target is for the real model, int4, 1024x1024)."
    return (f"sdcli --low-memory peak RSS: {peak} MiB (highest median over the modes) against the target of "
            f"{target:.0f} MiB ({target * 2**20 / 1e9:.0f} GB): {'met' if peak <= target else 'NOT met'}.")


def run_flow_bench(workdir: Path, output_dir: Path, arch: str, weight_format: str, peers: list[str], rounds: int,
                   size: int, precision: str, log: Callable[[str], None], steps: list[int] | None = None,
                   guidance: float | None = None, modes: tuple[str, ...] = MODES, optimum_python: str | None = None,
                   text_encoder_apart: bool = True, append: bool = False, warm_cache: Path | None = None) -> dict:
    """Measure, write bench.json (after every run) and bench.md in `output_dir`; the report.

    `append`: keep every run of an earlier bench.json of the same machine and settings, this invocation's
    rounds numbered after its rounds of that mode (the rotation goes on).  `warm_cache`: the warm runs'
    caches kept there, a folder a peer, instead of in a temporary folder; a peer whose folder a finished
    warm-up marked is not warmed up again (a later `append` invocation on the same machine)."""
    ov_dir, made = ensure_flow_models(workdir, arch, weight_format, log)
    default_steps, default_guidance = folder_defaults(ov_dir)
    steps = steps or [default_steps]
    guidance = default_guidance if guidance is None else guidance
    order = list(peers) + [TEXT_ENCODER_PEERS[p] for p in peers if text_encoder_apart and p in TEXT_ENCODER_PEERS]
    report = {"bench": "flow", "machine": machine_info(), "arch": arch, "size": size, "precision": precision,
              "weight_format": weight_format, "prompt": PROMPT, "scheduler": "folder", "guidance_scale": guidance,
              "folder_defaults": {"steps": default_steps, "guidance_scale": default_guidance}, "tiny_vae": False,
              "sdcli_args": [], "steps": steps, "rounds": rounds, "modes": list(modes), "peers": order,
              "model": str(ov_dir), "made": made}
    output_dir.mkdir(parents=True, exist_ok=True)
    runs = earlier_runs(output_dir / "bench.json", report, () if append else modes, None if append else order)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        warm = {peer: (warm_cache or tmp) / f"warm-{peer}" for peer in order}
        for mode in modes:
            if mode == "warm":
                for peer in order:
                    if (warm[peer] / WARMED).is_file():
                        log(f"warm-up {peer}: its cache in {warm[peer]} was warmed up before")
                        continue
                    for i in range(WARM_UPS.get(peer, 1)):
                        log(f"warm-up {peer} ({i + 1})")
                        cmd, env = flow_command(peer, ov_dir, steps[0], guidance, size, precision, tmp / "w.png",
                                                warm[peer], optimum_python)
                        run_measured(cmd, env)
                    warm[peer].mkdir(parents=True, exist_ok=True)
                    (warm[peer] / WARMED).touch()
            first = max((r.round + 1 for r in runs if r.mode == mode), default=0)
            for rnd in range(first, first + rounds):
                turn = order[rnd % len(order):] + order[:rnd % len(order)]
                for n in steps:
                    for position, peer in enumerate(turn):
                        cache = warm[peer] if mode == "warm" else tmp / f"cold-{peer}-{rnd}-{n}"
                        cmd, env = flow_command(peer, ov_dir, n, guidance, size, precision, tmp / f"{peer}.png",
                                                cache, optimum_python)
                        wall, rss, rc, timings, error = measure(peer, cmd, env)
                        if mode == "cold":
                            shutil.rmtree(cache, ignore_errors=True)
                        runs.append(Run(peer, mode, n, rnd, position, round(wall, 3), round(rss, 1), rc, timings,
                                        error))
                        log(f"{mode} round {rnd + 1}/{first + rounds} {n:>3} steps {peer:<18} {wall:8.1f} s "
                            f"{rss:8.0f} MiB"
                            + (f"  FAILED: {error}" if error else ""))
                        write_report(output_dir, report, runs)
    return write_report(output_dir, report, runs)


def most_runs(runs) -> int:
    """The most runs any peer has of one mode and step count: the rounds a table's medians are of."""
    return max(Counter((r["peer"], r["mode"], r["steps"]) for r in runs).values(), default=0)


def write_report(output_dir: Path, report: dict, runs: list[Run]) -> dict:
    from sdcli.util.fsutil import atomic_write_bytes

    report = dict(report, summary=summarize_flow(runs), runs=[r.__dict__ for r in runs],
                  rounds=max([report["rounds"], most_runs(r.__dict__ for r in runs)]),
                  peers=list(dict.fromkeys([*report["peers"], *(r.peer for r in runs)])),
                  modes=sorted({r.mode for r in runs} | set(report["modes"]), key=MODES.index))
    atomic_write_bytes(output_dir / "bench.json", json.dumps(report, indent=1).encode())
    atomic_write_bytes(output_dir / "bench.md", flow_markdown(report).encode())
    return report


def render(report: dict) -> str:
    """The table of any report of `sdcli bench` (a transformer bench's or an SD bench's)."""
    if report.get("bench") == "flow":
        return flow_markdown(report)
    from sdcli.bench.peers import markdown

    return markdown(report["summary"], report["machine"], report["size"], report["precision"],
                    report.get("arch", "sd15"), report.get("rounds", 0), report.get("guidance_scale", 7.5),
                    report.get("tiny_vae", False))


def update_readme(readme: Path, report_json: Path, name: str) -> None:
    """Replace the README block called `name` with the table rendered from `report_json`."""
    replace_block(readme, name, render_report(report_json, render))


def render_file(report_json: Path) -> str:
    """bench.md's text from a bench.json (`sdcli bench --no-run`)."""
    return render_report(report_json, render)
