"""A warm `sdcli serve` against whole `sdcli generate` processes and `sdcli batch`.

    python scripts/bench_serve.py MODEL_DIR [--runs 3] [--mode both|latency|queue]
                                            [--out bench-results/serve.json]
    python scripts/bench_serve.py --render docs/performance.md --block serve-xeon16 \\
                                  --out bench-results/xeon16/serve.json     # tables only, no run

Two configurations: 4 steps with CFG 7.5, and one step without CFG (Euler, 512x512).

Latency (`configs` in the JSON): every run of `generate` is a whole process timed from outside
(Python start-up, model load, compile or blob import, steps, decode, PNG written); a first
unmeasured run fills the compiled-model cache. The server is started once and warmed with one
unmeasured request per configuration; each request is timed by the client (send to last byte).
Generate runs and server requests alternate, so that other load on the machine falls on both
alike.

Queue (`queue` in the JSON): images per hour for --requests (10) images of one configuration,
each with its own prompt and seed, made three ways: the 10 txt2img requests posted at once to
the warm server (its default queue; timed from the first send to the last response), one
`sdcli batch` of the same 10 rows (a whole process with its default --parallel, timed from
outside), and 10 `sdcli generate` processes one after another (timed from outside). The cache
is warm for all three: before the measured rounds, a one-row batch and a generate of the same
settings run unmeasured, twice each (a model and size is exported on its second load). The
three take turns in an order rotated each round; each round's prompts are new, so that the
server's prompt cache does not favour it. Medians of --runs rounds.

The JSON also records `lscpu`'s model name and core count. A run of one mode keeps the other
mode's figures in --out when they were measured on the same machine. Prints markdown tables;
--render puts them into a file between <!-- bench:NAME:start --> and <!-- bench:NAME:end -->.
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
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

CONFIGS = {
    "4 steps, CFG 7.5": {"steps": 4, "cfg_scale": 7.5},
    "1 step, no CFG": {"steps": 1, "cfg_scale": 1.0},
}
SIZE = 512
PROMPT = "a lighthouse on a cliff at dusk, oil painting"
SUBJECTS = ["a lighthouse on a cliff", "a red fox in snow", "a harbour at night", "a mountain lake", "an old library",
            "a desert caravan", "a city street in rain", "a field of sunflowers", "a sailing ship", "a forest cabin"]


def cpu_info() -> dict:
    """`lscpu`'s model name, logical CPUs and physical cores (cores per socket x sockets)."""
    fields = {}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True, env={**os.environ, "LC_ALL": "C"}).stdout
        fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines()) if v}
    except (OSError, subprocess.CalledProcessError):
        pass
    cores = None
    if fields.get("Core(s) per socket", "").isdigit() and fields.get("Socket(s)", "").isdigit():
        cores = int(fields["Core(s) per socket"]) * int(fields["Socket(s)"])
    cpus = int(fields["CPU(s)"]) if fields.get("CPU(s)", "").isdigit() else os.cpu_count()
    return {"model_name": fields.get("Model name") or platform.processor() or platform.machine(), "cpus": cpus,
            "cores": cores}


def queue_prompt(round_no: int, i: int) -> str:
    return f"{SUBJECTS[i % len(SUBJECTS)]}, oil painting, study {round_no + 1}.{i + 1}"


# -- the three ways of making images ----------------------------------------------------------
def generate_cmd(model: Path, config: dict, prompt: str, seed: int, out: Path, size: int) -> list[str]:
    return [sys.executable, "-m", "sdcli", "generate", "--model", str(model), "--prompt", prompt,
            "--steps", str(config["steps"]), "--guidance-scale", str(config["cfg_scale"]),
            "--scheduler", "euler", "--seed", str(seed), "--width", str(size), "--height", str(size),
            "--output", str(out), "--quiet"]


def generate_seconds(model: Path, config: dict, seed: int, out: Path, size: int = SIZE, prompt: str = PROMPT) -> float:
    started = time.perf_counter()
    subprocess.run(generate_cmd(model, config, prompt, seed, out, size), check=True)
    return time.perf_counter() - started


def batch_seconds(model: Path, config: dict, rows: list[tuple[str, int]], folder: Path, size: int) -> float:
    """One `sdcli batch` of `rows` (prompt, seed) into a new folder, timed from outside."""
    folder.mkdir(parents=True)
    rows_file = folder / "rows.jsonl"
    rows_file.write_text("".join(json.dumps({"prompt": p, "seed": s}) + "\n" for p, s in rows))
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "sdcli", "batch", str(rows_file), "--output-dir", str(folder / "out"),
                    "--model", str(model), "--steps", str(config["steps"]), "--guidance-scale", str(config["cfg_scale"]),
                    "--scheduler", "euler", "--width", str(size), "--height", str(size), "--quiet"], check=True)
    seconds = time.perf_counter() - started
    made = len(list((folder / "out").glob("*.png")))
    if made != len(rows):
        raise RuntimeError(f"sdcli batch made {made} images of {len(rows)}")
    return seconds


def start_server(model: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "sdcli", "serve", "--model", str(model), "--port", "0",
                             "--models-dir", str(model.parent)], stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if "http://127.0.0.1:" in line:
            threading.Thread(target=proc.stderr.read, daemon=True).start()  # a full pipe would block it
            return proc, "http://127.0.0.1:" + line.split("http://127.0.0.1:")[1].split()[0]
    raise RuntimeError("the server did not start")


def request_seconds(url: str, config: dict, seed: int, size: int = SIZE, prompt: str = PROMPT) -> float:
    import requests

    body = {"prompt": prompt, "sampler_name": "Euler", "seed": seed, "width": size, "height": size, **config}
    started = time.perf_counter()
    r = requests.post(url + "/sdapi/v1/txt2img", json=body, timeout=3600)
    r.raise_for_status()
    base64.b64decode(r.json()["images"][0])
    return time.perf_counter() - started


def queue_seconds(url: str, config: dict, rows: list[tuple[str, int]], size: int) -> float:
    """All `rows` posted at once (one thread each); first send to last response."""
    with ThreadPoolExecutor(len(rows)) as pool:
        started = time.perf_counter()
        futures = [pool.submit(request_seconds, url, config, seed, size, prompt) for prompt, seed in rows]
        for future in futures:
            future.result()
        return time.perf_counter() - started


# -- the two measurements -----------------------------------------------------------------------
def measure_latency(model: Path, url: str, runs: int, size: int, tmp: Path) -> dict:
    configs = {}
    for name, config in CONFIGS.items():
        generate_seconds(model, config, 0, tmp / "warm.png", size)  # fills the blob cache
        request_seconds(url, config, 0, size)  # this configuration's UNet and VAE compiled
        row = configs[name] = {"generate_s": [], "serve_s": []}
        for i in range(runs):
            row["generate_s"].append(round(generate_seconds(model, config, 1 + i, tmp / "o.png", size), 3))
            row["serve_s"].append(round(request_seconds(url, config, 1 + i, size), 3))
    return configs


WAYS = ("serve", "batch", "generate")


def measure_queue(model: Path, url: str, runs: int, size: int, count: int, tmp: Path,
                  names: list[str] | None = None) -> dict:
    configs = {}
    for name, config in CONFIGS.items():
        if names is not None and name not in names:
            continue
        for warm in range(2):  # compiled, then exported: later loads import the blobs
            batch_seconds(model, config, [(PROMPT, 0)], tmp / f"warm-batch-{name}-{warm}".replace(" ", "_"), size)
            generate_seconds(model, config, 0, tmp / "warm.png", size)
        request_seconds(url, config, 0, size)
        row = configs[name] = {f"{way}_s": [] for way in WAYS}
        row["order"] = []
        for r in range(runs):
            rows = [(queue_prompt(r, i), 1000 * (r + 1) + i) for i in range(count)]
            order = WAYS[r % len(WAYS):] + WAYS[:r % len(WAYS)]
            for way in order:
                if way == "serve":
                    seconds = queue_seconds(url, config, rows, size)
                elif way == "batch":
                    seconds = batch_seconds(model, config, rows, tmp / f"batch-{name}-{r}".replace(" ", "_"), size)
                else:
                    started = time.perf_counter()
                    for i, (prompt, seed) in enumerate(rows):
                        subprocess.run(generate_cmd(model, config, prompt, seed, tmp / f"g{i}.png", size), check=True)
                    seconds = time.perf_counter() - started
                row[f"{way}_s"].append(round(seconds, 3))
            row["order"].append(list(order))
        row["images_per_hour"] = {way: round(count * 3600 / statistics.median(row[f"{way}_s"]), 1) for way in WAYS}
    return {"date": time.strftime("%Y-%m-%d"), "requests": count, "size": size, "runs": runs, "scheduler": "euler",
            "batch": "sdcli batch with its default --parallel (auto)", "configs": configs}


# -- tables -----------------------------------------------------------------------------------------
def latency_table(results: dict) -> str:
    lines = ["| configuration | `sdcli generate` (whole process) | warm `sdcli serve` request | ratio |",
             "|---|---|---|---|"]
    for name, row in results.get("configs", {}).items():
        gen, srv = statistics.median(row["generate_s"]), statistics.median(row["serve_s"])
        lines.append(f"| {name} | {gen:.1f} s | {srv:.1f} s | {gen / srv:.1f}x |")
    return "\n".join(lines) + "\n"


def queue_table(queue: dict) -> str:
    n = queue["requests"]
    lines = [f"| configuration | warm `sdcli serve`, {n} requests at once | `sdcli batch`, {n} rows "
             f"| {n} `sdcli generate` processes |", "|---|---|---|---|"]
    for name, row in queue["configs"].items():
        cells = []
        for way in WAYS:
            seconds = statistics.median(row[f"{way}_s"])
            cells.append(f"{n * 3600 / seconds:.0f} images/hour ({seconds:.1f} s)")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def tables(results: dict) -> str:
    cpu = results.get("cpu") or {}
    text = ""
    if results.get("configs"):
        text += (f"Latency, {results.get('size', SIZE)}x{results.get('size', SIZE)}, medians of "
                 f"{results.get('runs')} runs:\n\n" + latency_table(results))
    if results.get("queue"):
        q = results["queue"]
        text += ("\n" if text else "") + (
            f"Queue of {q['requests']} images, {q['size']}x{q['size']}, Euler, each with its own prompt and seed; "
            f"images per hour from the median of {q['runs']} rounds (first send or process start to last image):\n\n"
            + queue_table(q))
    where = cpu.get("model_name") or results.get("machine")
    if where:
        cores = f", {cpu['cores']} cores" if cpu.get("cores") else ""
        text = f"Machine: {where}{cores}; {results.get('date', '')}.\n\n" + text
    return text


def merged(old: dict, new: dict, mode: str) -> dict:
    """`new`, keeping `old`'s figures of the mode not run when they come from the same machine."""
    same = old.get("machine") == new["machine"] and (old.get("cpu") in (None, new["cpu"]))
    out = dict(new)
    if same and mode == "queue":
        for key in ("size", "runs", "configs"):
            if key in old:
                out[key] = old[key]
        out.setdefault("date", old.get("date"))
    if same and mode == "latency" and "queue" in old:
        out["queue"] = old["queue"]
    if same and mode == "queue" and "queue" in old and "queue" in new:  # configurations measured by other calls
        out["queue"] = dict(new["queue"], configs={**old["queue"].get("configs", {}), **new["queue"]["configs"]})
    if same and "model" in old:  # what the model was (written by hand); an old "note" may not hold now
        out["model"] = old["model"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path, nargs="?")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--mode", choices=("both", "latency", "queue"), default="both")
    parser.add_argument("--requests", type=int, default=10, help="images in the queue measurement")
    parser.add_argument("--size", type=int, default=SIZE, help="width and height (512; smaller for a quick check)")
    parser.add_argument("--out", type=Path, default=Path("bench-results/serve.json"))
    parser.add_argument("--render", type=Path, help="only put the tables of --out into this file's block")
    parser.add_argument("--config", action="append", choices=list(CONFIGS),
                        help="queue: only this configuration (repeatable; the others' earlier figures in --out are kept)")
    parser.add_argument("--block", default="serve", help="NAME of the <!-- bench:NAME:start/end --> block")
    args = parser.parse_args()
    if args.render:
        from sdcli.bench.peers import replace_block

        replace_block(args.render, args.block, tables(json.loads(args.out.read_text())))
        return
    if args.model is None:
        parser.error("MODEL_DIR is needed (or --render)")
    os.environ.setdefault("SDCLI_CACHE_DIR", tempfile.mkdtemp(prefix="sdcli-bench-serve-cache-"))
    results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores", "cpu": cpu_info(),
               "date": time.strftime("%Y-%m-%d")}
    if args.mode in ("both", "latency"):
        results.update({"size": args.size, "runs": args.runs})
    proc, url = start_server(args.model)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if args.mode in ("both", "latency"):
                results["configs"] = measure_latency(args.model, url, args.runs, args.size, Path(tmp))
            if args.mode in ("both", "queue"):
                results["queue"] = measure_queue(args.model, url, args.runs, args.size, args.requests, Path(tmp),
                                                 args.config)
    finally:
        proc.terminate()
        proc.wait(60)
    if args.mode != "both" and args.out.is_file():
        results = merged(json.loads(args.out.read_text()), results, args.mode)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(tables(results), end="")


if __name__ == "__main__":
    main()
