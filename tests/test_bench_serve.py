"""scripts/bench_serve.py without running a model: the queue table's images per hour, --render
into a marked block, and a one-mode run keeping the other mode's figures from the same machine."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_serve.py"


def load():
    spec = importlib.util.spec_from_file_location("bench_serve", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RESULTS = {
    "machine": "x86_64, 16 cores", "cpu": {"model_name": "Some CPU", "cpus": 32, "cores": 16}, "date": "2026-11-27",
    "size": 512, "runs": 3,
    "configs": {"4 steps, CFG 7.5": {"generate_s": [6.0, 5.0, 7.0], "serve_s": [3.0, 2.0, 2.5]}},
    "queue": {"requests": 10, "size": 512, "runs": 3, "configs": {"4 steps, CFG 7.5": {
        "serve_s": [40.0, 36.0, 30.0], "batch_s": [45.0, 60.0, 50.0], "generate_s": [72.0, 80.0, 90.0]}}},
}


def test_tables_give_images_per_hour_from_the_median_round():
    text = load().tables(RESULTS)
    assert text.startswith("Machine: Some CPU, 16 cores; 2026-11-27.")
    assert "| 4 steps, CFG 7.5 | 6.0 s | 2.5 s | 2.4x |" in text
    # medians 36 s, 50 s, 80 s for 10 images
    assert "| 4 steps, CFG 7.5 | 1000 images/hour (36.0 s) | 720 images/hour (50.0 s) | 450 images/hour (80.0 s) |" in text


def test_render_puts_the_tables_between_the_markers(tmp_path):
    out, doc = tmp_path / "serve.json", tmp_path / "performance.md"
    out.write_text(json.dumps(RESULTS))
    doc.write_text("before\n<!-- bench:serve-x:start -->\nold\n<!-- bench:serve-x:end -->\nafter\n")
    r = subprocess.run([sys.executable, str(SCRIPT), "--render", str(doc), "--block", "serve-x", "--out", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    text = doc.read_text()
    assert "old" not in text and text.startswith("before\n<!-- bench:serve-x:start -->\nMachine: Some CPU")
    assert "1000 images/hour" in text and text.endswith("<!-- bench:serve-x:end -->\nafter\n")


def test_a_queue_run_keeps_the_latency_figures_of_the_same_machine_only():
    bench = load()
    old = {k: v for k, v in RESULTS.items() if k != "queue"} | {"model": "SD 1.5 architecture", "note": "loaded"}
    new = {"machine": RESULTS["machine"], "cpu": RESULTS["cpu"], "date": "2026-11-28", "queue": RESULTS["queue"]}
    kept = bench.merged(old, new, "queue")
    assert kept["configs"] == RESULTS["configs"] and kept["queue"] == RESULTS["queue"] and kept["runs"] == 3
    assert kept["model"] == "SD 1.5 architecture" and "note" not in kept and kept["date"] == "2026-11-28"
    elsewhere = bench.merged(old, dict(new, machine="x86_64, 2 cores"), "queue")
    assert "configs" not in elsewhere and "model" not in elsewhere


def test_cpu_info_names_the_cpu():
    info = load().cpu_info()
    assert info["model_name"] and info["cpus"] >= 1
