"""A warm `sdcli serve`'s request latency against whole `sdcli generate` processes.

    python scripts/bench_serve.py MODEL_DIR [--runs 3] [--out bench-results/serve.json]

For each configuration (4 steps with CFG, and one step without), every run of `generate` is a
whole process timed from outside (Python start-up, model load, compile or blob import, steps,
decode, PNG written); a first unmeasured run fills the compiled-model cache. The server is
started once and warmed with one unmeasured request per configuration; each request is timed
by the client (send to last byte). Generate runs and server requests alternate, so that other
load on the machine falls on both alike. Prints a markdown table and writes the JSON.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

CONFIGS = {
    "4 steps, CFG 7.5": {"steps": 4, "cfg_scale": 7.5},
    "1 step, no CFG": {"steps": 1, "cfg_scale": 1.0},
}
SIZE = 512
PROMPT = "a lighthouse on a cliff at dusk, oil painting"


def generate_seconds(model: Path, config: dict, seed: int, out: Path) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "sdcli", "generate", "--model", str(model), "--prompt", PROMPT,
                    "--steps", str(config["steps"]), "--guidance-scale", str(config["cfg_scale"]),
                    "--scheduler", "euler", "--seed", str(seed), "--width", str(SIZE), "--height", str(SIZE),
                    "--output", str(out), "--quiet"], check=True)
    return time.perf_counter() - started


def start_server(model: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "sdcli", "serve", "--model", str(model), "--port", "0",
                             "--models-dir", str(model.parent)], stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if "http://127.0.0.1:" in line:
            return proc, "http://127.0.0.1:" + line.split("http://127.0.0.1:")[1].split()[0]
    raise RuntimeError("the server did not start")


def request_seconds(url: str, config: dict, seed: int) -> float:
    body = {"prompt": PROMPT, "sampler_name": "Euler", "seed": seed, "width": SIZE, "height": SIZE, **config}
    started = time.perf_counter()
    r = requests.post(url + "/sdapi/v1/txt2img", json=body, timeout=3600)
    r.raise_for_status()
    base64.b64decode(r.json()["images"][0])
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench-results/serve.json"))
    args = parser.parse_args()
    os.environ.setdefault("SDCLI_CACHE_DIR", tempfile.mkdtemp(prefix="sdcli-bench-serve-cache-"))
    results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
               "date": time.strftime("%Y-%m-%d"), "size": SIZE, "runs": args.runs, "configs": {}}
    proc, url = start_server(args.model)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name, config in CONFIGS.items():
                generate_seconds(args.model, config, 0, Path(tmp) / "warm.png")  # fills the blob cache
                request_seconds(url, config, 0)  # this configuration's UNet and VAE compiled
                row = results["configs"][name] = {"generate_s": [], "serve_s": []}
                for i in range(args.runs):
                    row["generate_s"].append(round(generate_seconds(args.model, config, 1 + i, Path(tmp) / "o.png"), 3))
                    row["serve_s"].append(round(request_seconds(url, config, 1 + i), 3))
    finally:
        proc.terminate()
        proc.wait(60)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print("| configuration | `sdcli generate` (whole process) | warm `sdcli serve` request | ratio |")
    print("|---|---|---|---|")
    for name, row in results["configs"].items():
        gen, srv = statistics.median(row["generate_s"]), statistics.median(row["serve_s"])
        print(f"| {name} | {gen:.1f} s | {srv:.1f} s | {gen / srv:.1f}x |")


if __name__ == "__main__":
    main()
