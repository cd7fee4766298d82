"""`sdcli batch`: inputs, names, per-row settings, bad rows, path safety, and resuming after a kill."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from sdcli.imaging.image_io import read_png_text, read_rgb

ENTRY = [sys.executable, "-m", "sdcli"]


def sdcli(*args, input=None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([*ENTRY, *map(str, args)], input=input, capture_output=True, text=True, cwd=cwd, timeout=300)


def common(model) -> list:
    return ["--model", model.ov_dir, "--width", "64", "--height", "64", "--steps", "2"]


def manifest(folder: Path) -> list[dict]:
    raw = (folder / "manifest.jsonl").read_text()
    assert raw.endswith("\n")
    return [json.loads(line) for line in raw.splitlines()]


def pngs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.suffix.lower() == ".png")


def assert_each_row_once(folder: Path, rows: int) -> None:
    entries = manifest(folder)
    assert sorted(e["index"] for e in entries) == list(range(rows))
    assert len({e["file"] for e in entries}) == rows
    assert pngs(folder) == sorted(e["file"] for e in entries)
    assert not [p for p in os.listdir(folder) if p.endswith(".part")]


def test_txt_names_seeds_and_rerun_skips(tiny_eps, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("# my prompts\na red fox\n\n   \nA Blue Bird, at dawn!  \n# done\nCafé crème " + "x" * 60 + "\n")
    out = tmp_path / "out"
    r = sdcli("batch", prompts, "--output-dir", out, *common(tiny_eps), "--seed", "10")
    assert r.returncode == 0, r.stderr
    names = ["00000-a-red-fox-10.png", "00001-a-blue-bird-at-dawn-11.png", "00002-cafe-creme-" + "x" * 29 + "-12.png"]
    assert pngs(out) == names
    assert r.stdout.split() == [str(out / n) for n in names]
    entries = manifest(out)
    assert [(e["line"], e["index"], e["seed"], e["file"]) for e in entries] == [
        (2, 0, 10, names[0]), (5, 1, 11, names[1]), (7, 2, 12, names[2])]
    assert entries[0]["timings"]["denoise"] > 0 and entries[0]["path"] == str(out / names[0])
    params = read_png_text(out / names[1])["parameters"]
    assert params.splitlines()[0] == "A Blue Bird, at dawn!"
    assert "Steps: 2, Sampler: PLMS, Schedule type: " in params and "CFG scale: 7.5, Seed: 11, Size: 64x64" in params
    assert "Precision: auto" in params  # as generate records it: --from-image redoes the row exactly
    assert "3 done, 0 failed, 0 skipped (already done)" in r.stderr

    before = {n: (out / n).stat().st_mtime_ns for n in names}
    raw = (out / "manifest.jsonl").read_bytes()
    r = sdcli("batch", prompts, "--output-dir", out, *common(tiny_eps), "--seed", "10")
    assert r.returncode == 0, r.stderr
    assert "0 done, 0 failed, 3 skipped (already done)" in r.stderr
    assert {n: (out / n).stat().st_mtime_ns for n in names} == before
    assert (out / "manifest.jsonl").read_bytes() == raw


def test_jsonl_overrides_bad_rows_and_path_safety(tiny_eps, init_image_file, tmp_path):
    outside = Path("/tmp") / f"sdcli-batch-abs-{uuid.uuid4().hex}"
    rows = [
        {"prompt": "fox", "seed": 3, "steps": 3, "guidance_scale": 5, "width": 72, "height": 64,
         "scheduler": "euler_a", "negative_prompt": "rain", "name": "custom"},      # line 1
        "just a string",                                                            # line 2
        None,                                                                       # line 3: blank
        {"prompt": "bad strength", "strength": 2},                                  # line 4
        {"prompt": "bad width", "width": 65},                                       # 5
        {"prompt": "bad scheduler", "scheduler": "nope"},                           # 6
        {"prompt": "  "},                                                           # 7
        '{"prompt": "broken json"',                                                 # 8
        {"prompt": "bad init", "init_image": "missing.png"},                        # 9
        {"prompt": "unknown", "colour": "red"},                                     # 10
        {"prompt": "up", "name": "../escape"},                                      # 11
        {"prompt": "abs", "name": str(outside)},                                    # 12
        {"prompt": "slash", "name": "a/b"},                                         # 13
        {"prompt": "nul", "name": "x\u0000y"},                                      # 14
        {"prompt": "hidden", "name": ".hidden"},                                    # 15
        {"prompt": "weird", "name": "Wéird name*?:<>.PNG"},                         # 16
        {"prompt": "dup", "name": "custom.png"},                                    # 17
        {"prompt": "img2img", "init_image": str(init_image_file), "strength": 0.5},  # 18
        {"prompt": "backslash", "name": "..\\win"},                                 # 19
        {"prompt": "bad init file", "init_image": "p.jsonl"},                       # 20
        {"prompt": "symlinked", "name": "link"},                                    # 21
    ]
    text = "".join(("" if r is None else r if isinstance(r, str) and r.startswith("{") else json.dumps(r)) + "\n"
                   for r in rows)
    (tmp_path / "p.jsonl").write_text(text)
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.png"
    victim.write_bytes(b"keep me")
    os.symlink(victim, out / "link.png")  # replaced by the image, never written through
    r = sdcli("batch", tmp_path / "p.jsonl", "-o", out, *common(tiny_eps), "--seed", "100", "--json")
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    for line, needle in [(4, "strength"), (5, "width"), (6, "nope"), (7, "empty prompt"), (8, "invalid JSON"),
                         (9, "missing.png"), (10, "colour"), (11, "../escape"), (12, str(outside)), (13, "a/b"),
                         (14, "NUL"), (15, ".hidden"), (17, "line 1"), (19, "win"), (20, "p.jsonl")]:
        assert any(f"p.jsonl:{line}:" in l and needle in l for l in r.stderr.splitlines()), (line, r.stderr)
    assert "5 done, 15 failed, 0 skipped (already done)" in r.stderr

    files = ["00001-just-a-string-101.png", "00016-img2img-116.png", "Weird-name.PNG", "custom.png", "link.png"]
    assert pngs(out) == sorted(files)
    assert sorted(os.listdir(tmp_path)) == ["out", "p.jsonl", "victim.png"]
    assert victim.read_bytes() == b"keep me" and not (out / "link.png").is_symlink()
    assert not outside.exists() and not Path(str(outside) + ".png").exists()
    assert not (tmp_path / "escape.png").exists()
    # --json prints exactly the manifest's lines
    assert [json.loads(l) for l in r.stdout.splitlines()] == manifest(out)

    fox = read_png_text(out / "custom.png")["parameters"].splitlines()
    assert fox[:2] == ["fox", "Negative prompt: rain"]
    assert "Steps: 3, Sampler: Euler a, Schedule type: " in fox[2] and "CFG scale: 5, Seed: 3, Size: 72x64" in fox[2]
    assert read_rgb(out / "custom.png").shape == (64, 72, 3)
    assert "Seed: 101, Size: 64x64" in read_png_text(out / files[0])["parameters"]
    i2i = read_png_text(out / files[1])["parameters"]
    assert "Denoising strength: 0.5" in i2i and "Size: 64x64" in i2i


def test_csv_rows_and_line_numbers(tiny_eps, tmp_path):
    (tmp_path / "p.csv").write_text(
        "Prompt,seed,steps,Negative Prompt,name\n"       # 1
        "a fox,7,3,,fox\n"                                # 2
        "\n"                                              # 3
        '"a two-line\nprompt, quoted",,,blurry,\n'        # 4-5
        "bad steps,1,x,,\n"                               # 6
        "a cat,,,,\n"                                     # 7
        "too,many,1,,,cells\n"                            # 8
    )
    out = tmp_path / "out"
    r = sdcli("batch", tmp_path / "p.csv", "-o", out, *common(tiny_eps), "--seed", "20", "--quiet",
              "--negative-prompt", "night")
    assert r.returncode == 1, r.stderr
    assert "p.csv:6:" in r.stderr and "steps" in r.stderr
    assert "p.csv:8:" in r.stderr and "cells" in r.stderr
    assert "3 done, 2 failed" in r.stderr
    assert r.stdout == ""
    assert pngs(out) == ["00001-a-two-line-prompt-quoted-21.png", "00003-a-cat-23.png", "fox.png"]
    assert {e["file"]: e["line"] for e in manifest(out)} == {
        "fox.png": 2, "00001-a-two-line-prompt-quoted-21.png": 4, "00003-a-cat-23.png": 7}
    fox = read_png_text(out / "fox.png")["parameters"]
    assert fox.startswith("a fox\nNegative prompt: night\nSteps: 3,") and "Seed: 7," in fox
    two = read_png_text(out / "00001-a-two-line-prompt-quoted-21.png")["parameters"]
    assert two.startswith("a two-line\nprompt, quoted\nNegative prompt: blurry\nSteps: 2,")


def test_stdin_txt_and_jsonl(tiny_eps, tmp_path):
    out = tmp_path / "out"
    r = sdcli("batch", "-", "-o", out, *common(tiny_eps), "--seed", "1", "--quiet", input="# x\none\ntwo\n")
    assert r.returncode == 0, r.stderr
    assert pngs(out) == ["00000-one-1.png", "00001-two-2.png"]
    r = sdcli("batch", "-", "--format", "jsonl", "-o", out, *common(tiny_eps), "--seed", "1",
              input='{"prompt": "one"}\n{"prompt": "three", "seed": 9}\n{"prompt": "four", "width": 7}\n')
    assert r.returncode == 1
    assert "<stdin>:3:" in r.stderr and "width" in r.stderr
    assert "1 done, 1 failed, 1 skipped (already done)" in r.stderr
    assert pngs(out) == ["00000-one-1.png", "00001-three-9.png", "00001-two-2.png"]
    assert len(manifest(out)) == 3


@pytest.mark.parametrize(
    "name,content,extra,needle",
    [
        ("missing.txt", None, [], "not found"),
        ("p.yaml", "prompt: x\n", [], "--format"),
        ("p.csv", "promt,seed\nx,1\n", [], "promt"),
        ("p.csv", "", [], "empty"),
        ("p.txt", "x\n", ["--format", "xml"], "--format"),
        ("p.txt", "x\n", ["--precision", "f64"], "precision"),
        ("p.txt", "x\n", ["--width", "65"], "width"),
        ("p.txt", "x\n", ["--model", "/nonexistent/sdcli-model"], "not found"),
    ],
)
def test_bad_file_or_option_exit_2(tiny_eps, tmp_path, name, content, extra, needle):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    r = sdcli("batch", path, "-o", tmp_path / "out", "--model", tiny_eps.ov_dir, *extra)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_interrupted_run_is_repaired(tiny_eps, tmp_path):
    """A manifest line cut mid-JSON, a deleted image and a stray .part file; no --seed (kept in DIR)."""
    prompts = tmp_path / "p.txt"
    prompts.write_text("one\ntwo\nthree\n")
    out = tmp_path / "out"
    r = sdcli("batch", prompts, "-o", out, *common(tiny_eps))
    assert r.returncode == 0, r.stderr
    assert "sdcli: seed " in r.stderr
    first = manifest(out)
    raw = (out / "manifest.jsonl").read_text()
    (out / "manifest.jsonl").write_text(raw[: raw.rindex("{") + 30])  # the last line cut off, no newline
    (out / first[0]["file"]).unlink()
    (out / f".{first[1]['file']}.abc123.part").write_bytes(b"half a png")
    r = sdcli("batch", prompts, "-o", out, *common(tiny_eps))
    assert r.returncode == 0, r.stderr
    assert "kept from an earlier run" in r.stderr
    assert "2 done, 0 failed, 1 skipped (already done)" in r.stderr
    assert_each_row_once(out, 3)
    assert sorted(e["file"] for e in manifest(out)) == sorted(e["file"] for e in first)


def test_kill_9_then_rerun_finishes_each_row_once(tiny_eps, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("".join(f"prompt number {i}\n" for i in range(6)))
    out = tmp_path / "out"
    args = [*ENTRY, "batch", str(prompts), "-o", str(out), "--model", str(tiny_eps.ov_dir), "--width", "64",
            "--height", "64", "--steps", "10", "--seed", "3", "--quiet"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest_file = out / "manifest.jsonl"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if manifest_file.exists() and manifest_file.read_bytes().count(b"\n") >= 1:
                break
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    lines_at_kill = manifest_file.read_bytes().count(b"\n")
    assert 1 <= lines_at_kill < 6, "the batch finished before it could be killed"
    r = subprocess.run([a for a in args if a != "--quiet"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"{6 - lines_at_kill} done, 0 failed, {lines_at_kill} skipped" in r.stderr
    assert_each_row_once(out, 6)


def test_one_batch_at_a_time_per_folder(tiny_eps, tmp_path):
    import fcntl

    (tmp_path / "p.txt").write_text("x\n")
    out = tmp_path / "out"
    out.mkdir()
    fd = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        r = sdcli("batch", tmp_path / "p.txt", "-o", out, *common(tiny_eps))
    finally:
        os.close(fd)
    assert r.returncode == 2 and "another sdcli batch" in r.stderr
    assert os.listdir(out) == []


def test_parallel_rows_give_the_sequential_images_within_1_of_255(tiny_eps, tmp_path):
    """--parallel 3 (throughput streams, rows in flight at once) writes each row once, the
    same PNG names as --parallel 1, and a bad row among them is still reported by line.

    The pixels may differ by 1 of 255: each throughput stream runs on fewer threads than a
    latency compile, and OpenVINO's CPU kernels split their f32 sums by thread count (the
    tiny VAE decoder gives 7e-7 different values at 1 and 2 threads, measured).  A given
    --parallel is itself deterministic: the same command gives the same bytes."""
    prompts = tmp_path / "p.jsonl"
    rows = [{"prompt": f"prompt number {i}"} for i in range(6)]
    rows[3] = {"prompt": "bad row", "steps": -1}
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    folders = {}
    for parallel, run in (("1", 1), ("3", 1), ("3", 2)):
        out = tmp_path / f"out{parallel}-{run}"
        r = sdcli("batch", prompts, "--output-dir", out, *common(tiny_eps), "--seed", "5", "--precision", "f32",
                  "--parallel", parallel, "--json")
        assert r.returncode == 1, r.stderr
        assert "p.jsonl:4:" in r.stderr and "5 done, 1 failed" in r.stderr
        assert len(r.stdout.splitlines()) == 5
        folders[parallel, run] = out
    entries = manifest(folders["3", 1])
    assert sorted(e["index"] for e in entries) == [0, 1, 2, 4, 5]
    assert pngs(folders["1", 1]) == pngs(folders["3", 1]) == pngs(folders["3", 2])
    from sdcli.imaging.image_io import read_rgb

    for name in pngs(folders["1", 1]):
        one, three = (read_rgb(folders[key] / name).astype(int) for key in (("1", 1), ("3", 1)))
        assert one.std() > 10 and np.abs(one - three).max() <= 1, name
        assert (folders["3", 1] / name).read_bytes() == (folders["3", 2] / name).read_bytes()


@pytest.mark.parametrize("value", ["0", "-2", "many", "65"])
def test_bad_parallel_value_is_exit_2(tiny_eps, tmp_path, value):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\n")
    r = sdcli("batch", prompts, "--output-dir", tmp_path / "out", *common(tiny_eps), "--parallel", value)
    assert r.returncode == 2
    assert "--parallel" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_batch_wide_generation_options_give_generate_s_image(tiny_eps, tmp_path):
    """--deepcache, --clip-skip (and --vae) apply to every row: a row's PNG is the one
    `sdcli generate` makes with the same flags."""
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red fox\n")
    flags = ["--deepcache", "2", "--clip-skip", "2", "--precision", "f32", "--steps", "4", "--scheduler", "euler"]
    out = tmp_path / "out"
    r = sdcli("batch", prompts, "--output-dir", out, "--model", tiny_eps.ov_dir, "--width", "64", "--height", "64",
              "--seed", "9", *flags)
    assert r.returncode == 0, r.stderr
    single = tmp_path / "single.png"
    r = sdcli("generate", "--model", tiny_eps.ov_dir, "--prompt", "a red fox", "--width", "64", "--height", "64",
              "--seed", "9", *flags, "--output", single, "--quiet")
    assert r.returncode == 0, r.stderr
    (row,) = pngs(out)
    assert (read_rgb(out / row) == read_rgb(single)).all()
    assert "Clip skip: 2, DeepCache: 2" in read_png_text(out / row)["parameters"]
    r = sdcli("batch", prompts, "--output-dir", tmp_path / "out2", "--model", tiny_eps.ov_dir, "--vae", "tiny")
    assert r.returncode == 2 and "tiny" in r.stderr
