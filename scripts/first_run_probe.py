"""Where a first run's time goes: whole `sdcli generate` processes and openvino-genai's
Text2ImagePipeline (sdcli.bench.runners genai) timed by GNU time, in rotated rounds, each
configuration on a cache of its own (cold: emptied before every run; warm: filled by two
unmeasured runs first), with sdcli's --json breakdown and per-component compile seconds.

    python scripts/first_run_probe.py MODEL_DIR OUT.jsonl [--steps 4] [--rounds 3] [--modes cold,warm]
        [--config NAME=ENV1=V1,ENV2=V2 ...] [--time /usr/bin/time]

A configuration is sdcli with extra environment variables (NAME=base for none), or `genai`.
Each run is one JSON line in OUT.jsonl; a summary of medians is printed at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

PROMPT = "a photograph of an astronaut riding a horse on the moon, highly detailed"


def command(config: str, model: str, steps: int, out_png: Path, cache: Path) -> list[str]:
    common = ["--prompt", PROMPT, "--steps", str(steps), "--seed", "42", "--guidance-scale", "7.5"]
    if config.startswith("genai"):
        return [sys.executable, "-m", "sdcli.bench.runners", "genai", "--model", model, *common, "--size", "512",
                "--cache-dir", str(cache)]
    return [sys.executable, "-m", "sdcli", "generate", "--model", model, *common, "--scheduler", "euler",
            "--width", "512", "--height", "512", "--json", "--quiet", "--vae", "full", "--output", str(out_png)]


def timed(time_bin: str, cmd: list[str], env: dict) -> dict:
    with tempfile.NamedTemporaryFile("r", suffix=".time") as t:
        proc = subprocess.run([time_bin, "-f", "%e %M", "-o", t.name, *cmd], env=env, capture_output=True, text=True)
        wall, rss_kb = t.read().split()[-2:]
    rec = {"rc": proc.returncode, "wall_s": float(wall), "rss_mib": round(int(rss_kb) / 1024, 1)}
    if proc.returncode:
        rec["error"] = (proc.stderr.strip().splitlines() or ["?"])[-1][:300]
        return rec
    try:
        data = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return rec
    timings = data.get("timings", data)
    rec["compile"] = {k: round(v, 3) for k, v in timings.items() if k.startswith("compile_")}
    for key in ("breakdown", "load_compile", "text_encoder", "vae_decode", "encode_prompt", "decode", "load_wait"):
        if key in timings:
            rec[key] = timings[key]
    return rec


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("out")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--modes", default="cold,warm")
    p.add_argument("--config", action="append", default=[])
    p.add_argument("--time", default=shutil.which("time") or "/usr/bin/time")
    a = p.parse_args()
    configs: dict[str, dict] = {}
    for spec in a.config or ["base", "genai"]:
        name, _, envs = spec.partition("=")
        configs[name] = dict(e.split("=", 1) for e in envs.split(",") if e)
    names = list(configs)
    work = Path(tempfile.mkdtemp(prefix="probe-"))
    runs = []
    with open(a.out, "a") as out:
        for mode in a.modes.split(","):
            caches = {n: work / f"{mode}-{n}" for n in names}
            if mode == "warm":
                for n in names:
                    for _ in range(2):
                        env = {**os.environ, **configs[n], "SDCLI_CACHE_DIR": str(caches[n])}
                        subprocess.run(command(n, a.model, a.steps, work / "w.png", caches[n]), env=env,
                                       capture_output=True)
            for rnd in range(a.rounds):
                order = names[rnd % len(names):] + names[:rnd % len(names)]
                for pos, n in enumerate(order):
                    if mode == "cold":
                        shutil.rmtree(caches[n], ignore_errors=True)
                    env = {**os.environ, **configs[n], "SDCLI_CACHE_DIR": str(caches[n])}
                    rec = {"mode": mode, "config": n, "env": configs[n], "round": rnd, "position": pos,
                           "steps": a.steps, **timed(a.time, command(n, a.model, a.steps, work / "p.png", caches[n]), env)}
                    runs.append(rec)
                    out.write(json.dumps(rec) + "\n")
                    out.flush()
                    print(f"{mode} r{rnd} {n:<12} {rec['wall_s']:7.2f} s {rec['rss_mib']:8.0f} MiB "
                          f"{rec.get('compile', '')} {rec.get('error', '')}", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    print("\nmedians (wall s, RSS MiB):")
    for mode in a.modes.split(","):
        for n in names:
            mine = [r for r in runs if r["mode"] == mode and r["config"] == n and not r["rc"]]
            if mine:
                b = [r.get("breakdown", {}) for r in mine]
                stages = {k: round(statistics.median([x.get(k, 0) for x in b]), 2) for k in (b[0] or {})}
                print(f"{mode} {n:<12} {statistics.median(r['wall_s'] for r in mine):7.2f} "
                      f"{statistics.median(r['rss_mib'] for r in mine):8.0f}  {stages}")


if __name__ == "__main__":
    main()
