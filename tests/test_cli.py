"""The command line: outputs, metadata, and one clear line with exit code 2 for bad input."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sdcli.imaging.image_io import read_png_text, read_rgb

REPO = Path(__file__).resolve().parents[1]


def sdcli(*args, cwd=None, env=None) -> subprocess.CompletedProcess:
    """Run the real command in a fresh process."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "sdcli", *map(str, args)], capture_output=True, text=True, cwd=cwd, env=full_env, timeout=300
    )


def base_args(model, out):
    return ["generate", "--model", model.ov_dir, "--prompt", "a red fox", "--steps", "3", "--seed", "5",
            "--width", "64", "--height", "64", "--output", out, "--quiet"]


def test_generate_writes_png_with_a1111_parameters(tiny_eps, tmp_path):
    out = tmp_path / "fox.png"
    r = sdcli(*base_args(tiny_eps, out), "--negative-prompt", "rain", "--scheduler", "euler_a")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    image = read_rgb(out)
    assert image.shape == (64, 64, 3)
    params = read_png_text(out)["parameters"]
    lines = params.splitlines()
    assert lines[0] == "a red fox"
    assert lines[1] == "Negative prompt: rain"
    assert lines[2].startswith("Steps: 3, Sampler: Euler a, Schedule type: ")
    assert "CFG scale: 7.5, Seed: 5, Size: 64x64" in lines[2]
    assert not list(tmp_path.glob("*.part"))


def test_num_images_use_consecutive_seeds(tiny_eps, tmp_path):
    out = tmp_path / "many.png"
    # f32: bf16 kernels may round differently from one process to the next
    r = sdcli(*base_args(tiny_eps, out), "--num-images", "2", "--precision", "f32")
    assert r.returncode == 0, r.stderr
    first, second = tmp_path / "many-1.png", tmp_path / "many-2.png"
    assert "Seed: 6" in read_png_text(second)["parameters"]
    alone = tmp_path / "alone.png"
    args = base_args(tiny_eps, alone)
    args[args.index("--seed") + 1] = "6"
    assert sdcli(*args, "--precision", "f32").returncode == 0
    assert np.array_equal(read_rgb(second), read_rgb(alone))
    assert not np.array_equal(read_rgb(first), read_rgb(second))


def test_json_output_and_random_seed(tiny_eps, tmp_path):
    import json

    out = tmp_path / "j.png"
    args = [a for a in base_args(tiny_eps, out) if a not in ("--quiet",)]
    i = args.index("--seed")
    del args[i : i + 2]
    r = sdcli(*args, "--json")
    assert r.returncode == 0, r.stderr
    record = json.loads(r.stdout.strip())
    assert record["path"] == str(out)
    assert 0 <= record["seed"] < 2**32
    assert record["timings"]["denoise"] > 0
    assert f"Seed: {record['seed']}," in read_png_text(out)["parameters"]


def test_generate_never_imports_torch_or_diffusers(tiny_eps, tmp_path):
    code = (
        "import sys\n"
        "from sdcli.cli.app import app\n"
        f"args = {[str(a) for a in base_args(tiny_eps, tmp_path / 'x.png')]!r}\n"
        "try:\n    app(args)\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
        "bad = [m for m in ('torch', 'diffusers') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "x.png").is_file()


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--steps", "abc"], "steps"),
        (["--steps", "0"], "steps"),
        (["--strength", "1.5"], "strength"),
        (["--strength", "-0.1"], "strength"),
        (["--width", "65"], "width"),
        (["--height", "0"], "height"),
        (["--width", "-64"], "width"),
        (["--guidance-scale", "x"], "guidance"),
        (["--seed", "-1"], "seed"),
        (["--scheduler", "nope"], "nope"),
        (["--precision", "f64"], "precision"),
        (["--rng", "dice"], "rng"),
        (["--num-images", "0"], "num-images"),
        (["--output", "out.jpg"], ".png"),
    ],
)
def test_bad_flags_exit_2_without_traceback(tiny_eps, tmp_path, extra, needle):
    out = tmp_path / "o.png"
    r = sdcli(*base_args(tiny_eps, out), *extra)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    assert needle in r.stderr
    assert list(tmp_path.iterdir()) == []


def _broken_copy(model, tmp_path, mutate) -> Path:
    dst = tmp_path / "broken"
    shutil.copytree(model.ov_dir, dst)
    mutate(dst)
    return dst


@pytest.mark.parametrize(
    "mutate,needle",
    [
        (lambda d: shutil.rmtree(d / "unet"), "unet"),
        (lambda d: (d / "vae_decoder" / "openvino_model.bin").unlink(), "vae_decoder"),
        (lambda d: shutil.rmtree(d / "tokenizer"), "tokenizer"),
        (lambda d: (d / "unet" / "config.json").write_text("{not json"), "config.json"),
        (lambda d: (d / "unet" / "openvino_model.xml").write_text("<net><broken"), "unet"),
        (lambda d: _truncate(d / "unet" / "openvino_model.bin"), "unet"),
        (lambda d: (d / "unet" / "config.json").write_text('{"sample_size": -4}'), "sample_size"),
    ],
    ids=["no-unet", "no-vae-bin", "no-tokenizer", "bad-json", "bad-xml", "truncated-bin", "bad-config"],
)
def test_broken_model_folder_exit_2(tiny_eps, tmp_path, mutate, needle):
    model_dir = _broken_copy(tiny_eps, tmp_path, mutate)
    out = tmp_path / "o.png"
    r = sdcli("generate", "--model", model_dir, "--prompt", "x", "--steps", "2", "--output", out, "--quiet")
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    assert needle in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_missing_model_folder_and_no_model(tmp_path):
    r = sdcli("generate", "--model", tmp_path / "nowhere", "--prompt", "x", "--output", tmp_path / "o.png")
    assert r.returncode == 2 and "not found" in r.stderr
    env = {k: v for k, v in os.environ.items() if k != "SDCLI_MODEL"}
    r = subprocess.run([sys.executable, "-m", "sdcli", "generate", "--prompt", "x"], capture_output=True, text=True,
                       cwd=tmp_path, env=env, timeout=120)
    assert r.returncode == 2 and "sdcli convert" in r.stderr


def test_only_model_under_models_is_used(tiny_eps, tmp_path):
    (tmp_path / "models").mkdir()
    os.symlink(tiny_eps.ov_dir, tmp_path / "models" / "tiny")
    env = {k: v for k, v in os.environ.items() if k != "SDCLI_MODEL"}
    r = subprocess.run([sys.executable, "-m", "sdcli", "generate", "--prompt", "x", "--steps", "1", "--seed", "1",
                        "--width", "64", "--height", "64", "--quiet"], capture_output=True, text=True, cwd=tmp_path,
                       env={**env, "PYTHONPATH": str(REPO)}, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "Model: tiny-epsilon-ov" in read_png_text(tmp_path / "output.png")["parameters"]


@pytest.mark.parametrize("content", [b"", b"this is text, not an image", b"\x89PNG\r\n\x1a\n\x00\x00"])
def test_bad_init_image_exit_2(tiny_eps, tmp_path, content):
    bad = tmp_path / "bad.png"
    bad.write_bytes(content)
    out = tmp_path / "o.png"
    r = sdcli(*base_args(tiny_eps, out), "--init-image", bad)
    assert r.returncode == 2, r.stderr
    assert "bad.png" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


def test_missing_init_image_and_unwritable_output(tiny_eps, tmp_path):
    r = sdcli(*base_args(tiny_eps, tmp_path / "o.png"), "--init-image", tmp_path / "none.png")
    assert r.returncode == 2 and "not found" in r.stderr
    r = sdcli(*base_args(tiny_eps, tmp_path / "no" / "such" / "dir.png"))
    assert r.returncode == 2 and "cannot write" in r.stderr


def test_strength_too_small_for_steps(tiny_eps, init_image_file, tmp_path):
    r = sdcli(*base_args(tiny_eps, tmp_path / "o.png"), "--init-image", init_image_file, "--strength", "0.1")
    assert r.returncode == 2 and "strength" in r.stderr
    assert not (tmp_path / "o.png").exists()


def test_debug_shows_traceback(tmp_path):
    r = sdcli("--debug", "generate", "--model", tmp_path, "--prompt", "x", "--output", tmp_path / "o.png")
    assert r.returncode == 2
    assert "Traceback" in r.stderr


def test_img2img_uses_init_image_size(tiny_eps, init_image_file, tmp_path):
    out = tmp_path / "i2i.png"
    args = [a for a in base_args(tiny_eps, out)]
    for flag in ("--width", "--height"):
        i = args.index(flag)
        del args[i : i + 2]
    r = sdcli(*args, "--init-image", init_image_file, "--strength", "0.5")
    assert r.returncode == 0, r.stderr
    assert read_rgb(out).shape == (64, 96, 3)
    assert "Denoising strength: 0.5" in read_png_text(out)["parameters"]


def test_hub_repo_from_the_huggingface_cache(tiny_eps, tmp_path):
    """`--model owner/name` resolves through huggingface_hub's cache (offline here)."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "hub" / "models--someone--tiny-ov"
    shutil.copytree(tiny_eps.ov_dir, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    out = tmp_path / "hub.png"
    r = sdcli("generate", "--model", "someone/tiny-ov", "--prompt", "x", "--steps", "1", "--seed", "1", "--width", "64",
              "--height", "64", "--output", out, "--quiet", env={"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr
    assert out.is_file()
    r = sdcli("generate", "--model", "someone/not-cached", "--prompt", "x", "--output", tmp_path / "o.png",
              env={"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2 and "cannot download someone/not-cached" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_full_disk_while_writing_is_a_clear_error_and_leaves_nothing(tiny_eps, tmp_path, monkeypatch):
    """Fault injection: the disk fills up while the PNG is written."""
    import errno

    from typer.testing import CliRunner

    import sdcli.util.fsutil
    from sdcli.cli.app import app

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(sdcli.util.fsutil.os, "fsync", no_space)
    out = tmp_path / "full.png"
    result = CliRunner().invoke(app, [str(a) for a in base_args(tiny_eps, out)])
    assert result.exit_code == 1
    assert "No space left on device" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_version_prints_and_exits_0():
    from sdcli import __version__

    for args in (["--version"], ["--version", "generate"]):
        r = sdcli(*args)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == f"sdcli {__version__}"


def test_help_lists_every_command():
    r = sdcli("--help")
    assert r.returncode == 0
    for command in ("convert", "generate", "info", "bench", "bench-features", "batch"):
        assert f"  {command} " in r.stdout


def test_a_bug_is_exit_70_with_one_line_and_the_traceback_only_with_debug(tiny_eps, tmp_path, monkeypatch):
    """An unexpected exception (a bug) is told apart from a usage error (2) and a failed run (1)."""
    from typer.testing import CliRunner

    import sdcli.engine.engine
    from sdcli.cli.app import app

    def broken(*args, **kwargs):
        raise TypeError("unsupported operand type(s) for +: 'NoneType' and 'int'")

    monkeypatch.setattr(sdcli.engine.engine.Engine, "generate", broken)
    args = [str(a) for a in base_args(tiny_eps, tmp_path / "x.png")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 70
    assert result.output.strip() == ("sdcli: internal error: TypeError: unsupported operand type(s) for +: "
                                     "'NoneType' and 'int' (rerun with --debug for the traceback)")
    result = CliRunner().invoke(app, ["--debug", *args])
    assert result.exit_code == 70 and "Traceback" in result.output
    assert result.output.strip().splitlines()[-1] == ("sdcli: internal error: TypeError: unsupported operand "
                                                      "type(s) for +: 'NoneType' and 'int'")
    assert not (tmp_path / "x.png").exists()


def test_a_file_stream_openvino_could_not_write_is_a_failed_run_not_a_bug(tiny_eps, tmp_path, monkeypatch):
    """Saving an IR to a full disk makes OpenVINO raise RuntimeError("basic_ios::clear: iostream
    error"): exit 1 with one line that says what may be wrong, not exit 70."""
    from typer.testing import CliRunner

    import sdcli.engine.engine
    from sdcli.cli.app import app

    def full_disk(*args, **kwargs):
        raise RuntimeError("Exception from src/core/src/pass/serialize.cpp:1371:\nbasic_ios::clear: iostream error")

    monkeypatch.setattr(sdcli.engine.engine.Engine, "generate", full_disk)
    result = CliRunner().invoke(app, [str(a) for a in base_args(tiny_eps, tmp_path / "x.png")])
    assert result.exit_code == 1
    line = result.output.strip()
    assert len(line.splitlines()) == 1 and line.startswith("sdcli: error: a model file could not be written or read")
    assert "(OpenVINO: basic_ios::clear: iostream error)" in line and line.endswith("is the disk full?")
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("scheduler", ["pndm", "ddim"])
def test_more_steps_than_leading_spacing_has_room_for_is_exit_2(tiny_eps, tmp_path, scheduler):
    """Leading spacing with steps_offset 1 reaches timestep 1000 at 1000 steps (past the
    training schedule; diffusers raises IndexError there): a usage error, not a bug (70)."""
    out = tmp_path / "x.png"
    args = [a if a != "3" else "1000" for a in base_args(tiny_eps, out)]
    r = sdcli(*args, "--scheduler", scheduler)
    assert r.returncode == 2, r.stderr
    assert "at most 999 steps" in r.stderr and not out.exists()


def test_several_images_on_a_first_run_do_not_crash(tiny_eps, tmp_path):
    """With an empty compiled-model cache, --num-images 2 once crashed (SIGSEGV): the text
    encoder, freed after the prompt, was compiled again for the second image and then freed
    by the loader thread while the UNet ran."""
    out = tmp_path / "many.png"
    r = sdcli(*base_args(tiny_eps, out), "--num-images", "2", "--precision", "f32",
              env={"SDCLI_CACHE_DIR": str(tmp_path / "empty-cache")})
    assert r.returncode == 0, (r.returncode, r.stderr)
    assert (tmp_path / "many-1.png").is_file() and (tmp_path / "many-2.png").is_file()
