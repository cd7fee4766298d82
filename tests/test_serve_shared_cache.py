"""Two real `sdcli serve` processes and several `sdcli generate` processes on one fresh
compiled-model cache (SDCLI_CACHE_DIR) at once.

A model and size is compiled on its first load (a `.seen` mark), exported as a blob on its
second, imported on later ones (sdcli/runtime/core.py). The servers and the generate processes
load three shapes (sizes, with and without CFG) in different orders at the same time, so marks,
exports and imports of one blob happen while other processes run. Every request must answer 200
with generate's PNG, byte for byte; the cache must end with no temporary files, every blob in it
must import, and a later `sdcli batch` run must import them all (changing nothing in the cache)
and make the same images again."""
from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

requests = pytest.importorskip("requests")
pytest.importorskip("fastapi")

from PIL import Image  # noqa: E402

from tests.test_serve_process import Server  # noqa: E402

PROMPT = "a lighthouse, shared cache"
# (width, height, cfg): three UNet shapes, two VAE decoder sizes
SETTINGS = [(64, 64, 7.0), (96, 64, 7.0), (64, 64, 1.0)]
STEPS = 2


def seed_of(i: int) -> int:
    return 100 + i


def generate(model: Path, i: int, out: Path) -> subprocess.Popen:
    width, height, cfg = SETTINGS[i]
    return subprocess.Popen(
        [sys.executable, "-m", "sdcli", "generate", "--model", str(model), "--prompt", PROMPT, "--seed", str(seed_of(i)),
         "--scheduler", "euler_a", "--guidance-scale", str(cfg), "--steps", str(STEPS), "--width", str(width),
         "--height", str(height), "--output", str(out), "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(proc: subprocess.Popen) -> None:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err


def txt2img(server: Server, i: int) -> bytes:
    width, height, cfg = SETTINGS[i]
    r = requests.post(server.url + "/sdapi/v1/txt2img", timeout=300, json={
        "prompt": PROMPT, "seed": seed_of(i), "sampler_name": "Euler a", "cfg_scale": cfg, "steps": STEPS,
        "width": width, "height": height})
    assert r.status_code == 200, r.text
    return base64.b64decode(r.json()["images"][0])


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def listing(cache: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(cache.iterdir())}


def test_two_servers_and_generate_processes_share_one_fresh_cache(tiny_eps, tmp_path, monkeypatch):
    started = time.monotonic()
    cache = tmp_path / "cache"
    monkeypatch.setenv("SDCLI_CACHE_DIR", str(cache))  # the servers and generate processes inherit it
    model = tiny_eps.ov_dir
    cli = {}  # setting -> generate's PNG

    with ThreadPoolExecutor(16) as pool:
        # the servers start (compiling the 64x64 CFG text encoder and UNet) while two generate
        # processes load settings 0 and 2
        first = {i: generate(model, i, tmp_path / f"gen-{i}.png") for i in (0, 2)}
        servers = list(pool.map(lambda _: Server("--model", model, "--queue-size", 8), range(2)))
        print(f"servers up: {time.monotonic() - started:.1f} s")
        try:
            # each server gets every setting (in opposite orders) while generate makes setting 1
            order = list(range(len(SETTINGS)))
            answers = {(s, i): pool.submit(txt2img, server, i)
                       for s, server in enumerate(servers) for i in (order if s == 0 else order[::-1])}
            second = {1: generate(model, 1, tmp_path / "gen-1.png")}
            for i, proc in {**first, **second}.items():
                finished(proc)
                cli[i] = (tmp_path / f"gen-{i}.png").read_bytes()
            served = {key: future.result() for key, future in answers.items()}
            print(f"requests and generate done: {time.monotonic() - started:.1f} s")
        finally:
            for server in servers:
                server.stop()
    for server in servers:
        assert server.proc.returncode == 143, "".join(server.lines)
        assert "Traceback" not in "".join(server.lines), "".join(server.lines)
    for (s, i), png in served.items():
        assert png == cli[i], f"server {s}, setting {SETTINGS[i]}: not generate's PNG"

    # no temporary or partial files; a blob for every component loaded more than once, each importable
    names = sorted(p.name for p in cache.iterdir())
    assert not [n for n in names if n.startswith(".") or n.endswith(".part")], names
    blobs = [n for n in names if n.endswith(".blob")]
    for component in ("text_encoder", "unet", "vae_decoder"):
        assert any(n.startswith(component + "-") for n in blobs), names
    import openvino as ov

    from sdcli.runtime.core import blob_payload

    core = ov.Core()
    for name in blobs:
        data = (cache / name).read_bytes()
        core.import_model(data[blob_payload(data[:4096]):], "CPU")  # raises on a truncated or corrupt blob

    # a later run imports them: it gives the same images and changes nothing in the cache (a blob
    # that failed to import would be deleted and compiled again; a shape compiled only once would
    # be exported now)
    before = listing(cache)
    print(f"cache checked: {time.monotonic() - started:.1f} s")
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"prompt": PROMPT, "seed": seed_of(i), "width": w, "height": h,
                                        "guidance_scale": cfg, "steps": STEPS, "scheduler": "euler_a",
                                        "name": f"row-{i}"}) + "\n" for i, (w, h, cfg) in enumerate(SETTINGS)))
    r = subprocess.run([sys.executable, "-m", "sdcli", "batch", str(rows), "--output-dir", str(tmp_path / "again"),
                        "--model", str(model), "--parallel", "1", "--quiet"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    for i in range(len(SETTINGS)):  # the same pixels (batch's PNG parameters are test_batch's)
        assert np.array_equal(pixels(tmp_path / "again" / f"row-{i}.png"), pixels(tmp_path / f"gen-{i}.png"))
    assert listing(cache) == before
    print(f"shared-cache test: {time.monotonic() - started:.1f} s, {len(served)} requests, {len(blobs)} blobs")
