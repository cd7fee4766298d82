"""scripts/batch-prompts.sh: one image per prompt line, resumable."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sdcli.imaging.image_io import read_png_text

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "batch-prompts.sh"


def test_batch_script_makes_one_image_per_prompt_and_resumes(tiny_eps, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# a comment\na red fox\n\na blue whale\n")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "sdcli").write_text(f"#!/bin/sh\nexec {sys.executable} -m sdcli \"$@\"\n")
    (bindir / "sdcli").chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}
    args = ["bash", str(SCRIPT), str(prompts), str(tmp_path / "out"), "--model", str(tiny_eps.ov_dir),
            "--steps", "1", "--width", "64", "--height", "64"]
    r = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    images = sorted((tmp_path / "out").glob("*.png"))
    assert [p.name for p in images] == ["0001.png", "0002.png"]
    assert read_png_text(images[1])["parameters"].startswith("a blue whale\n")
    assert "Seed: 1002," in read_png_text(images[1])["parameters"]

    r = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0
    assert r.stderr.count("skip") == 2


def test_batch_script_usage_error(tmp_path):
    r = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True)
    assert r.returncode == 2 and "usage" in r.stderr
