"""`sdcli batch --ray`: rows spread over Ray workers, a worker lost mid-batch, resuming, no Ray;
and the scripts that go with batches (scripts/batch-file.sh, parallel-generate.sh, bacalhau-job.yaml).

One in-process Ray cluster of 2 CPUs for the whole file (workers of 1 CPU each); the batches
run in this process through run_batch, so a test can hand in a worker that crashes on purpose.
"""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sdcli.batch.run import BatchOptions, run_batch
from sdcli.imaging.image_io import read_png_text, read_rgb

from sdcli.batch.ray_runner import RowWorker, run_on_ray  # imports Ray only when run

ENTRY = [sys.executable, "-m", "sdcli"]
CRASH_DIR_VAR = "SDCLI_TEST_CRASH_DIR"


class CrashingWorker(RowWorker):
    """Test-only worker: its process exits (as when a node is lost) on a row whose prompt starts
    with "crash" the first time such a row is run anywhere (a marker file remembers), and on
    every row whose prompt starts with "always crash"."""

    def run(self, job, image=None):
        marker = Path(os.environ[CRASH_DIR_VAR]) / job.file
        if job.prompt.startswith("always crash") or (job.prompt.startswith("crash") and not marker.exists()):
            marker.write_text(str(os.getpid()))
            os._exit(1)
        return super().run(job, image)


class ModelMissingWorker(RowWorker):
    """Test-only worker that behaves as if the model folder were missing on its node."""

    def ready(self):
        return {**super().ready(), "error": "model folder not found: /models/sd15"}


@pytest.fixture(scope="module")  # shut down at the end of this file: its raylet, GCS and monitors take CPU
def ray_cluster(tmp_path_factory):
    ray = pytest.importorskip("ray")
    crash_dir = tmp_path_factory.mktemp("crash-markers")
    os.environ[CRASH_DIR_VAR] = str(crash_dir)  # workers inherit this process's environment
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this file
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield crash_dir
    ray.shutdown()


def sdcli(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([*ENTRY, *map(str, args)], capture_output=True, text=True, timeout=300, env=env)


def common(model) -> list:
    return ["--model", model.ov_dir, "--width", "64", "--height", "64", "--steps", "2"]


def options(model, file: Path, out: Path, **kw) -> BatchOptions:
    base = dict(file=str(file), output_dir=out, model=str(model.ov_dir), width=64, height=64, steps=2, seed=10,
                as_json=True, ray="auto", ray_cpus_per_actor=1)
    return BatchOptions(**{**base, **kw})


def manifest(folder: Path) -> list[dict]:
    raw = (folder / "manifest.jsonl").read_text()
    assert raw.endswith("\n")
    return [json.loads(line) for line in raw.splitlines()]


def assert_each_row_once(folder: Path, rows: int) -> list[dict]:
    entries = manifest(folder)
    assert sorted(e["index"] for e in entries) == list(range(rows))
    assert len({e["file"] for e in entries}) == rows
    assert sorted(p.name for p in folder.glob("*.png")) == sorted(e["file"] for e in entries)
    assert not [p for p in os.listdir(folder) if p.endswith(".part")]
    return entries


def comparable(entries: list[dict]) -> dict:
    drop = ("timings", "path", "worker")
    return {e["file"]: {k: v for k, v in e.items() if k not in drop} for e in entries}


def test_rows_on_two_workers_match_a_run_without_ray(ray_cluster, tiny_eps, init_image_file, tmp_path, capsys):
    rows = [{"prompt": "a red fox"}, {"prompt": "a blue bird", "seed": 3, "scheduler": "euler_a", "steps": 3},
            {"prompt": "grass", "negative_prompt": "rain", "name": "grass"},
            {"prompt": "painted", "init_image": str(init_image_file), "strength": 0.5},
            {"prompt": "bad width", "width": 65}, {"prompt": "sixth row", "guidance_scale": 1}]
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))

    code = run_batch(options(tiny_eps, prompts, tmp_path / "ray", precision="f32"), runner=run_on_ray)  # f32: thread counts agree
    captured = capsys.readouterr()
    assert code == 1, captured.err  # the bad row, as without Ray
    assert "p.jsonl:5:" in captured.err and "width" in captured.err
    assert "5 done, 1 failed, 0 skipped (already done)" in captured.err
    ray_entries = manifest(tmp_path / "ray")
    assert [json.loads(line) for line in captured.out.splitlines()] == ray_entries  # --json: the manifest's lines
    assert all(e["worker"] and e["timings"]["denoise"] > 0 for e in ray_entries)

    r = sdcli("batch", prompts, "-o", tmp_path / "here", *common(tiny_eps), "--seed", "10", "--quiet",
              "--precision", "f32")
    assert r.returncode == 1
    here_entries = manifest(tmp_path / "here")
    assert comparable(ray_entries) == comparable(here_entries)
    for name in comparable(here_entries):
        assert (read_png_text(tmp_path / "ray" / name) == read_png_text(tmp_path / "here" / name)), name
        ray_pixels, here_pixels = read_rgb(tmp_path / "ray" / name), read_rgb(tmp_path / "here" / name)
        assert np.abs(ray_pixels.astype(int) - here_pixels).max() <= 2, name  # 1-thread workers, 2-thread here
    params = read_png_text(tmp_path / "ray" / "00001-a-blue-bird-3.png")["parameters"]
    assert params.startswith("a blue bird\nSteps: 3, Sampler: Euler a, Schedule type: ")
    assert "CFG scale: 7.5, Seed: 3, Size: 64x64" in params
    assert "Denoising strength: 0.5" in read_png_text(tmp_path / "ray" / "00003-painted-13.png")["parameters"]


def test_lost_worker_row_is_retried_and_rerun_skips_everything(ray_cluster, tiny_eps, tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("one\ntwo\ncrash here\nfour\nfive\nsix\n")
    out = tmp_path / "out"
    runner = functools.partial(run_on_ray, worker_class=CrashingWorker)

    code = run_batch(options(tiny_eps, prompts, out), runner=runner)
    err = capsys.readouterr().err
    assert code == 0, err
    assert (ray_cluster / "00002-crash-here-12.png").exists()  # a worker did die on that row
    assert "was lost" in err and "line 3 goes back to the queue" in err
    assert "6 done, 0 failed, 0 skipped (already done)" in err
    entries = assert_each_row_once(out, 6)
    crashed_pid = (ray_cluster / "00002-crash-here-12.png").read_text()
    crash_entry = next(e for e in entries if e["index"] == 2)
    assert not crash_entry["worker"].endswith(f":{crashed_pid}")
    raw = (out / "manifest.jsonl").read_bytes()
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}

    # again with Ray, without Ray, and through the command line with --ray local: nothing to do
    # (no row is left, so no cluster is even started)
    assert run_batch(options(tiny_eps, prompts, out), runner=runner) == 0
    assert "0 done, 0 failed, 6 skipped (already done)" in capsys.readouterr().err
    r = sdcli("batch", prompts, "-o", out, *common(tiny_eps), "--seed", "10")
    assert r.returncode == 0 and "0 done, 0 failed, 6 skipped (already done)" in r.stderr, r.stderr
    r = sdcli("batch", prompts, "-o", out, *common(tiny_eps), "--seed", "10", "--ray", "local")
    assert r.returncode == 0 and "0 done, 0 failed, 6 skipped (already done)" in r.stderr, r.stderr
    assert (out / "manifest.jsonl").read_bytes() == raw
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")} == mtimes


def test_row_that_always_kills_its_worker_fails_after_retries(ray_cluster, tiny_eps, tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("first\nalways crash\nthird\n")
    out = tmp_path / "out"
    code = run_batch(options(tiny_eps, prompts, out, shared_output=True, ray_cpus_per_actor=None),
                     runner=functools.partial(run_on_ray, worker_class=CrashingWorker))
    err = capsys.readouterr().err
    assert code == 1, err
    assert "p.txt:2:" in err and "lost 4 times" in err
    assert "2 done, 1 failed, 0 skipped (already done)" in err
    entries = manifest(out)
    assert sorted(e["index"] for e in entries) == [0, 2]
    assert sorted(p.name for p in out.glob("*.png")) == sorted(e["file"] for e in entries)
    assert "Seed: 12," in read_png_text(out / "00002-third-12.png")["parameters"]


def test_no_worker_can_open_the_model(ray_cluster, tiny_eps, tmp_path, capsys):
    from sdcli.util.errors import SdcliError

    (tmp_path / "p.txt").write_text("x\n")
    with pytest.raises(SdcliError, match="no Ray worker could start: on .*model folder not found"):
        run_batch(options(tiny_eps, tmp_path / "p.txt", tmp_path / "out"),
                  runner=functools.partial(run_on_ray, worker_class=ModelMissingWorker))
    assert not (tmp_path / "out" / "manifest.jsonl").exists()


def test_workers_write_the_compiled_model_cache_as_a_batch_without_ray(ray_cluster, tiny_eps, tmp_path, capsys):
    """A model and size compiled a second time (the first leaves a `.seen` mark in the cache) has
    its blobs written, by Ray workers as by a batch without Ray.
    Two batches of two rows on two workers, at 72x56 (a size no other test uses, so that its
    blobs are this test's)."""
    cache = Path(os.environ["SDCLI_CACHE_DIR"])  # the workers' too: they inherit this environment
    prompts = tmp_path / "p.txt"
    prompts.write_text("one\ntwo\n")
    before = set(cache.glob("*.blob"))
    for run in ("first", "second"):
        code = run_batch(options(tiny_eps, prompts, tmp_path / run, width=72, height=56), runner=run_on_ray)
        assert code == 0, capsys.readouterr().err
    written = {p.name.split("-")[0] for p in set(cache.glob("*.blob")) - before}
    # the text encoder's shapes do not depend on the size: an earlier test may have made its blob
    assert {"unet", "vae_decoder"} <= written <= {"text_encoder", "unet", "vae_decoder"}, written
    assert "could not write" not in capsys.readouterr().err


def test_without_ray_installed_one_line_and_exit_2(tiny_eps, tmp_path):
    (tmp_path / "p.txt").write_text("x\n")
    code = ("import sys; sys.modules['ray'] = None; from sdcli.cli.app import main; "  # `import ray` raises ImportError
            "sys.argv = ['sdcli', *sys.argv[1:]]; main()")
    r = subprocess.run([sys.executable, "-c", code, "batch", str(tmp_path / "p.txt"), "-o", str(tmp_path / "out"),
                        "--model", str(tiny_eps.ov_dir), "--ray", "auto"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and 'pip install "sdcli[ray]"' in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra", [["--shared-output"], ["--ray-cpus-per-actor", "2"]])
def test_ray_options_need_ray(tiny_eps, tmp_path, extra):
    (tmp_path / "p.txt").write_text("x\n")
    r = sdcli("batch", tmp_path / "p.txt", "-o", tmp_path / "out", "--model", tiny_eps.ov_dir, *extra)
    assert r.returncode == 2 and "--ray" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


# --- scripts/ -------------------------------------------------------------------------

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def shim_env(tmp_path: Path, **extra) -> dict:
    """PATH with an `sdcli` that runs this checkout's sdcli."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    (bindir / "sdcli").write_text(f'#!/bin/sh\nexec {sys.executable} -m sdcli "$@"\n')
    (bindir / "sdcli").chmod(0o755)
    return {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", **extra}


def test_batch_file_script(tiny_eps, tmp_path):
    (tmp_path / "p.txt").write_text("# prompts\na red fox\n\na blue whale\n")
    args = ["bash", SCRIPTS / "batch-file.sh", tmp_path / "p.txt", tmp_path / "out", *common(tiny_eps), "--quiet"]
    env = shim_env(tmp_path, SEED="40")
    r = subprocess.run(list(map(str, args)), capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["00000-a-red-fox-40.png", "00001-a-blue-whale-41.png"]
    assert "2 image(s) in" in r.stderr
    r = subprocess.run(list(map(str, args[:-1])), capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and "0 done, 0 failed, 2 skipped" in r.stderr, r.stderr
    r = subprocess.run(["bash", str(SCRIPTS / "batch-file.sh")], capture_output=True, text=True)
    assert r.returncode == 2 and "usage" in r.stderr


def test_parallel_generate_script(tiny_eps, tmp_path):
    (tmp_path / "p.txt").write_text("# prompts\na red fox\n\nit's a \"quoted\" one; $HOME\n")
    args = ["bash", SCRIPTS / "parallel-generate.sh", tmp_path / "p.txt", tmp_path / "out", *common(tiny_eps)]
    env = shim_env(tmp_path, JOBS="2", BASE_SEED="50")
    r = subprocess.run(list(map(str, args)), capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.split()) == [str(tmp_path / "out" / "0001.png"), str(tmp_path / "out" / "0002.png")]
    params = read_png_text(tmp_path / "out" / "0002.png")["parameters"]
    assert params.startswith('it\'s a "quoted" one; $HOME\n') and "Seed: 52," in params
    (tmp_path / "out" / "0001.png").unlink()
    r = subprocess.run(list(map(str, args)) + ["--no-such-option"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 1 and "skip" in r.stderr and "failed: prompt 1" in r.stderr, r.stderr


def test_bacalhau_job_runs_sdcli_batch(tiny_eps, tmp_path):
    """The job's arguments, with its container paths mapped to local ones, are a valid `sdcli batch`."""
    yaml = pytest.importorskip("yaml")
    job = yaml.safe_load((SCRIPTS / "bacalhau-job.yaml").read_text())
    assert job["Type"] == "batch" and len(job["Tasks"]) == 1
    task = job["Tasks"][0]
    params = task["Engine"]["Params"]["Parameters"]
    assert params[0] == "batch" and "Entrypoint" not in task["Engine"]["Params"]  # the image's ENTRYPOINT: sdcli
    inputs = {i["Target"]: i["Source"]["Type"] for i in task["InputSources"]}
    outputs = [p["Path"] for p in task["ResultPaths"]]
    assert params[1] in inputs and params[params.index("--model") + 1] in inputs
    assert params[params.index("--output-dir") + 1] in outputs
    assert all(t.startswith(("/models/", "/inputs/")) for t in inputs)

    (tmp_path / "prompts.txt").write_text("a lighthouse\n")
    local = {params[1]: tmp_path / "prompts.txt", "/outputs": tmp_path / "outputs",
             params[params.index("--model") + 1]: tiny_eps.ov_dir, "20": "2"}
    args = [local.get(a, a) for a in params]
    r = sdcli(*args, "--width", "64", "--height", "64")
    assert r.returncode == 0, r.stderr
    assert [p.name for p in (tmp_path / "outputs").glob("*.png")] == ["00000-a-lighthouse-1000.png"]


def test_sdxl_rows_on_ray_workers_match_a_run_without_ray(ray_cluster, tiny_sdxl, tmp_path, capsys):
    """An SDXL folder on Ray workers: the same PNGs (parameters, and pixels within 2 of 255 across
    thread counts) as `sdcli batch` without Ray."""
    rows = [{"prompt": "a red fox"}, {"prompt": "a blue bird", "seed": 3, "negative_prompt": "rain"}]
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code = run_batch(options(tiny_sdxl, prompts, tmp_path / "ray", precision="f32"), runner=run_on_ray)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    ray_entries = assert_each_row_once(tmp_path / "ray", 2)
    r = sdcli("batch", prompts, "-o", tmp_path / "here", *common(tiny_sdxl), "--seed", "10", "--quiet",
              "--precision", "f32")
    assert r.returncode == 0, r.stderr
    assert comparable(ray_entries) == comparable(manifest(tmp_path / "here"))
    for name in comparable(ray_entries):
        assert read_png_text(tmp_path / "ray" / name) == read_png_text(tmp_path / "here" / name), name
        ray_pixels, here_pixels = read_rgb(tmp_path / "ray" / name), read_rgb(tmp_path / "here" / name)
        assert np.abs(ray_pixels.astype(int) - here_pixels).max() <= 2, name


def test_klein_reference_rows_on_ray_match_a_run_without_ray(ray_cluster, tiny_klein, tmp_path, capsys):
    """FLUX.2-klein rows with reference images (a row's, the command line's): read here, sent to the
    workers with the row, and the picture is the local batch's."""
    from sdcli.imaging.image_io import save_png
    from tests.models import smooth_picture

    save_png(tmp_path / "ref-a.png", smooth_picture(100, 70))
    save_png(tmp_path / "ref-b.png", smooth_picture(70, 90))
    rows = tmp_path / "k.jsonl"
    rows.write_text(json.dumps({"prompt": "turn the sky red", "name": "a", "reference_images": ["ref-a.png"]}) + "\n"
                    + json.dumps({"prompt": "turn the sky red", "name": "b"}) + "\n")
    klein = str(tiny_klein[1])
    code = run_batch(BatchOptions(file=str(rows), output_dir=tmp_path / "ray", model=klein, width=64, height=48,
                                  steps=4, guidance_scale=1.0, seed=10, ray="auto", ray_cpus_per_actor=1,
                                  precision="f32", reference_images=(tmp_path / "ref-b.png",)), runner=run_on_ray)
    assert code == 0, capsys.readouterr().err
    r = sdcli("batch", rows, "-o", tmp_path / "here", "--model", klein, "--width", "64", "--height", "48", "--seed",
              "10", "--precision", "f32", "--reference-image", tmp_path / "ref-b.png", "--quiet")
    assert r.returncode == 0, r.stderr
    for name in ("a.png", "b.png"):
        assert read_png_text(tmp_path / "ray" / name) == read_png_text(tmp_path / "here" / name)
        assert np.abs(read_rgb(tmp_path / "ray" / name).astype(int) - read_rgb(tmp_path / "here" / name)).max() <= 2
    assert "Reference images: ref-a.png," in read_png_text(tmp_path / "ray" / "a.png")["parameters"]
    assert np.abs(read_rgb(tmp_path / "ray" / "a.png").astype(int) - read_rgb(tmp_path / "ray" / "b.png")).max() > 2


def test_sigterm_stops_a_ray_batch_as_one_without_ray(ray_cluster, tiny_eps, tmp_path):
    """ray.init puts its own SIGTERM handler in place (sys.exit(15)); sdcli puts its own back, so a
    terminated `batch --ray` exits 143 as without Ray, every recorded row a whole PNG."""
    import signal
    import time

    import ray

    prompts = tmp_path / "p.txt"
    prompts.write_text("".join(f"prompt {i}\n" for i in range(8)))
    out = tmp_path / "out"
    proc = subprocess.Popen([*ENTRY, "batch", prompts, "--output-dir", out, *common(tiny_eps), "--steps", "30",
                             "--ray", ray.get_runtime_context().gcs_address, "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not list(out.glob("*.png")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert list(out.glob("*.png")), proc.communicate()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "sdcli: terminated" in err, (proc.returncode, err)
    assert "Traceback" not in err
    recorded = [row["file"] for row in manifest(out)]
    assert 1 <= len(recorded) < 8 and sorted(recorded) == sorted(p.name for p in out.glob("*.png"))
