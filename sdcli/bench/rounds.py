"""The rotated rounds of the scripts/bench_*.py benchmarks (ControlNet, upscalers, hires fix):
whole processes measured from outside (peers.run_measured: wall, peak RSS, through GNU time
where there is one), unmeasured warm-ups of each configuration first (two: sdcli writes a
compiled model's blob on its second run, peers.WARM_UP_RUNS), then rounds whose order
rotates (A B C, B C A, C A B, ...) so that none always runs first; every run is kept (round,
position, load average) and the report saved after each, so that a stopped benchmark keeps
what it measured.  The medians and the markdown table are rendered from the runs alone."""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Callable, Sequence

from sdcli.bench.peers import WARM_UP_RUNS, median, run_measured

Command = Callable[[str], tuple[list[str], dict]]


def bench_parser(name: str, root: Path, rounds: int, workdir: Path | None = None,
                 description: str | None = None) -> argparse.ArgumentParser:
    """A benchmark script's parser with the options they share: --workdir (models and pictures;
    default `workdir`, else ROOT/.bench/NAME), --output-dir (bench.json and bench.md; default
    ROOT/bench-results/local-NAME), --rounds, and --render (see rendered_only)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--workdir", type=Path, default=workdir or root / ".bench" / name)
    parser.add_argument("--output-dir", type=Path, default=root / "bench-results" / f"local-{name}")
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--render", type=Path, default=None, help="only render bench.md from this bench.json")
    parser.add_argument("--append", action="store_true",
                        help="keep the runs of --output-dir's bench.json and add these rounds after them (a benchmark "
                             "spread over several calls of one machine: its round numbers continue)")
    return parser


def rendered_only(args: argparse.Namespace, markdown: Callable[[dict], str]) -> bool:
    """With --render BENCH_JSON: bench.md written again beside it by `markdown` (and printed),
    True (nothing is run); else False."""
    if args.render is None:
        return False
    text = markdown(json.loads(args.render.read_text()))
    args.render.with_suffix(".md").write_text(text)
    print(text)
    return True


def appended_runs(args: argparse.Namespace) -> list[dict]:
    """With --append, the runs already in --output-dir's bench.json (none where it has none)."""
    saved = args.output_dir / "bench.json"
    if not getattr(args, "append", False) or not saved.is_file():
        return []
    return list(json.loads(saved.read_text()).get("runs", []))


def made_dirs(args: argparse.Namespace) -> tuple[Path, Path]:
    """The parsed --workdir and --output-dir, both made."""
    for folder in (args.workdir, args.output_dir):
        folder.mkdir(parents=True, exist_ok=True)
    return args.workdir, args.output_dir


def warm_up_phrase(report: dict) -> str:
    """"one unmeasured warm-up" or "two unmeasured warm-ups": what the report's runs came after."""
    n = int(report.get("warm_ups", 1))
    return {1: "one unmeasured warm-up", 2: "two unmeasured warm-ups"}.get(n, f"{n} unmeasured warm-ups")


def rotated(names: Sequence[str], rnd: int) -> list[str]:
    """`names` in round `rnd`'s order: started `rnd` places on."""
    names = list(names)
    return names[rnd % len(names):] + names[:rnd % len(names)] if names else []


def last_json(stdout: str) -> dict:
    """The last JSON object line a run printed (`--json`); ValueError where there is none."""
    lines = [line for line in stdout.strip().splitlines() if line.startswith("{")]
    if not lines:
        raise ValueError("no JSON from the run")
    return json.loads(lines[-1])


def error_line(stderr: str) -> str:
    return (stderr.strip().splitlines() or ["?"])[-1][:300]


def save_report(output_dir: Path, report: dict, markdown: str | None = None) -> None:
    """bench.json (and bench.md where given) in `output_dir`, written atomically."""
    from sdcli.util.fsutil import atomic_write_bytes

    atomic_write_bytes(output_dir / "bench.json", json.dumps(report, indent=1).encode())
    if markdown is not None:
        atomic_write_bytes(output_dir / "bench.md", markdown.encode())


def measure_rounds(report: dict, names: Sequence[str], command: Command, rounds: int, *, key: str = "config",
                   fields: dict | None = None, parse: Callable[[str], dict] | None = None,
                   warm_up: Sequence[str] | None = None, save: Callable[[], None] | None = None,
                   log: Callable[[str], None] = print) -> list[dict]:
    """Run each of `warm_up` (default: all `names`) WARM_UP_RUNS times unmeasured (sdcli's first run
    of a model only compiles it, its second writes the blob every later run imports), then `rounds` rotated rounds of
    `names`; `command(name)` gives a run's command line and environment.  Each run is appended to
    report["runs"] as {key: name, **fields, round, position, wall_s, peak_rss_mb, rc, at,
    load_average} plus what `parse(stdout)` returns (a run that failed, or whose output `parse`
    cannot read (ValueError, KeyError, IndexError), gets "error" instead); `save()` after each.
    Returns this call's runs."""
    warm_up = names if warm_up is None else warm_up
    if warm_up:
        report["warm_ups"] = WARM_UP_RUNS  # (bench.json files from before have one: warm_up_phrase)
    for name in warm_up:
        for i in range(WARM_UP_RUNS):
            log(f"warm-up {name} ({i + 1})")
            run_measured(*command(name))
    done = []
    mine = [r for r in report.get("runs", []) if r.get(key) in names
            and all(r.get(k) == v for k, v in (fields or {}).items())]
    first = max((r["round"] for r in mine), default=-1) + 1  # after the runs kept by --append
    for rnd in range(first, first + rounds):
        for position, name in enumerate(rotated(names, rnd)):
            check: dict = {}
            wall, rss, rc, stdout, stderr = run_measured(*command(name), check=check)
            run = {key: name, **(fields or {}), "round": rnd, "position": position, "wall_s": round(wall, 3),
                   "peak_rss_mb": round(rss, 1), "rc": rc, "at": time.strftime("%H:%M:%S"),
                   "load_average": os.getloadavg()[0]}
            if rc:
                run["error"] = error_line(stderr)
            elif parse is not None:
                try:
                    run.update(parse(stdout))
                except (ValueError, KeyError, IndexError) as exc:
                    run["error"] = str(exc)[:300] or error_line(stderr)
            report.setdefault("runs", []).append(run)
            done.append(run)
            label = " ".join(str(v) for v in (fields or {}).values())
            log(f"{label + ' ' if label else ''}round {rnd + 1}/{first + rounds} {name:<16} {wall:8.2f} s {rss:7.0f} MiB"
                + (f"  FAILED {run['error']}" if "error" in run else ""))
            if save is not None:
                save()
    report["rounds"] = max(int(report.get("rounds") or 0), first + rounds)  # with --append, all of them
    return done


def median_rows(runs: list[dict], by: Sequence[str], values: Sequence[str]) -> list[dict]:
    """One row per distinct `by` (in the runs' first-seen order): the number of successful runs
    and the median of each of `values` over them (a group without one gets its first error)."""
    rows = []
    for group in dict.fromkeys(tuple(r.get(k) for k in by) for r in runs):
        mine = [r for r in runs if tuple(r.get(k) for k in by) == group]
        ok = [r for r in mine if r.get("rc") == 0 and "error" not in r]
        row = {**dict(zip(by, group)), "runs": len(ok)}
        if ok:
            row.update({v: median([r.get(v) for r in ok]) for v in values})
        else:
            row["error"] = next((r["error"] for r in mine if r.get("error")), "")
        rows.append(row)
    return rows


def rounds_phrase(runs: list[dict], by: Sequence[str]) -> str:
    """"medians of N rotated rounds", or where --append gave some rows more rounds than others,
    "medians of N to M rotated rounds (each row's runs)"."""
    counts: dict[tuple, set] = {}
    for run in runs:
        counts.setdefault(tuple(run.get(k) for k in by), set()).add(run.get("round"))
    sizes = sorted({len(rounds) for rounds in counts.values()}) or [0]
    if len(sizes) == 1:
        return f"medians of {sizes[0]} rotated rounds"
    return f"medians of {sizes[0]} to {sizes[-1]} rotated rounds (each row's runs)"


def table(rows: list[dict], cols: Sequence[str]) -> list[str]:
    """A markdown table's lines: the columns of `cols` that some row has."""
    present = [c for c in cols if any(row.get(c) is not None for row in rows)]
    lines = ["| " + " | ".join(present) + " |", "|" + "---|" * len(present)]
    for row in rows:
        lines.append("| " + " | ".join("" if row.get(c) is None else str(row.get(c)) for c in present) + " |")
    return lines
