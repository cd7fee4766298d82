"""Ctrl-C and SIGTERM stop a run cleanly: exit 130/143, finished files kept, nothing partial."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest


def _start(args, cwd):
    # as from a terminal: a shell's background job (e.g. a CI runner started with `&`) has
    # SIGINT ignored, and a child would inherit that
    return subprocess.Popen([sys.executable, "-m", "sdcli", *map(str, args)], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for(path_glob, folder, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if list(folder.glob(path_glob)):
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_generate_stops_cleanly_between_images(tiny_eps, tmp_path, sig, code):
    out = tmp_path / "img.png"
    proc = _start(["generate", "--model", tiny_eps.ov_dir, "--prompt", "x", "--steps", "40", "--seed", "1",
                   "--width", "64", "--height", "64", "--num-images", "400", "--output", out, "--quiet"], tmp_path)
    assert _wait_for("img-1.png", tmp_path), proc.communicate()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    made = sorted(tmp_path.glob("img-*.png"))
    assert 1 <= len(made) < 400
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]
    from sdcli.imaging.image_io import read_rgb

    for image in made:  # every file left is a whole image
        assert read_rgb(image).shape == (64, 64, 3)


def test_convert_interrupted_by_sigterm_leaves_nothing(tiny_eps, tmp_path):
    out = tmp_path / "converted"
    proc = _start(["convert", tiny_eps.diffusers_dir, "--output", out, "--weight-format", "fp32"], tmp_path)
    seen = []
    for line in proc.stderr:  # progress lines: "[1/6] tokenizer", "[2/6] text_encoder", ...
        seen.append(line)
        if line.startswith("[3/6]"):
            proc.send_signal(signal.SIGTERM)
            break
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, "".join(seen) + err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("sig,code,parallel", [(signal.SIGINT, 130, "1"), (signal.SIGTERM, 143, "2")])
def test_batch_stops_cleanly_and_a_rerun_finishes(tiny_eps, tmp_path, sig, code, parallel):
    """One at a time and with rows in flight at once: the signal stops the batch with every
    recorded row a whole PNG and nothing partial; the same command then does the rest."""
    import json

    prompts = tmp_path / "p.txt"
    rows = 12  # each row 30 steps: the signal finds rows in flight, and the rerun has the rest to do
    prompts.write_text("".join(f"prompt {i}\n" for i in range(rows)))
    out = tmp_path / "out"
    args = ["batch", prompts, "--output-dir", out, "--model", tiny_eps.ov_dir, "--steps", "30", "--seed", "1",
            "--width", "64", "--height", "64", "--quiet", "--parallel", parallel]
    proc = _start(args, tmp_path)
    assert _wait_for("*.png", out), proc.communicate()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    assert not [p for p in out.iterdir() if p.name.endswith(".part") or p.name.startswith(".")]
    recorded = [json.loads(line)["file"] for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert 1 <= len(recorded) < rows
    assert sorted(recorded) == sorted(p.name for p in out.glob("*.png"))
    proc = _start(args, tmp_path)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert len((out / "manifest.jsonl").read_text().splitlines()) == rows
