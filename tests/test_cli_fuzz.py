"""A fuzz run of `sdcli generate`'s argument space with the tiny model (issue 7): random
combinations of its flags with good, boundary and garbage values, in-process.  Whatever
comes in: no uncaught exception, exit code 0, 1 or 2 — never 70, which a bug (any
unexpected exception) gives —, exit 1 only with a one-line message, no traceback, and exit
0 only with the image written."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from sdcli.cli.app import app
from sdcli.schedulers import A1111_NAMES, scheduler_names

EXAMPLES = 50

# garbage: short text without digits (a number made of random digits could ask for 900 steps)
garbage = st.text(st.characters(blacklist_categories=("Cs", "Nd")), max_size=8)
prompt_text = st.text(st.sampled_from(list("ab ,()[]:\\1.5") + ["🦊", "ש", "\u202e", "\x00"]), max_size=30)


def _values(good, *bad):
    """Mostly good values (so that many runs get to generate), one in eight bad or garbage."""
    wrong = st.one_of(garbage, *(st.just(b) for b in bad)) if bad else garbage
    return st.integers(0, 7).flatmap(lambda roll: wrong if roll == 0 else good).map(str)


FLAGS = {
    "--prompt": _values(prompt_text),
    "--negative-prompt": _values(prompt_text),
    "--steps": _values(st.integers(1, 3), "0", "-1", "1001", "1.5"),
    "--strength": _values(st.floats(0.5, 1.0), "nan", "inf", "-0.5", "1.5"),
    "--guidance-scale": _values(st.floats(0, 20), "nan", "inf", "1e400", "-1", "120"),
    "--seed": _values(st.integers(0, 2**64 - 1), "-1", str(2**64)),
    "--width": _values(st.sampled_from([8, 16, 32, 40]), "0", "-8", "12"),
    "--height": _values(st.sampled_from([8, 16, 32, 40]), "0", "-8", "12"),
    "--num-images": _values(st.integers(1, 2), "0", "-1"),
    "--mask-blur": _values(st.integers(0, 8), "-1", "257"),
    "--clip-skip": _values(st.integers(1, 2), "0", "25"),
    "--deepcache": _values(st.integers(1, 3), "0"),
    "--scheduler": _values(st.sampled_from(scheduler_names() + list(A1111_NAMES.values())), "nope", ""),
    "--precision": _values(st.sampled_from(["auto", "f32", "bf16"]), "f64", ""),
    "--rng": _values(st.sampled_from(["torch", "numpy"]), "dice"),
    "--vae": _values(st.just("full"), "tiny", "x"),
    "--device": _values(st.just("CPU"), "XYZ", ""),
    "--init-image": _values(st.sampled_from(["rgb.png", "gray.png"]), "one.png", "empty.png", "text.png", "missing.png"),
    "--mask": _values(st.sampled_from(["mask.png", "rgb.png"]), "empty.png", "missing.png"),
    "--output": _values(st.just("o.png"), "o.jpg", "", "sub/o.png"),
}
SWITCHES = ["--emphasis", "--no-emphasis", "--low-memory", "--json"]

arguments = st.tuples(
    st.lists(st.sampled_from(sorted(FLAGS)), unique=True, max_size=6).flatmap(
        lambda chosen: st.fixed_dictionaries({k: FLAGS[k] for k in chosen})),
    st.lists(st.sampled_from(SWITCHES), max_size=2, unique=True),
)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    from sdcli.imaging.image_io import save_png

    d = tmp_path_factory.mktemp("fuzz-files")
    y, x = np.mgrid[0:40, 0:56]
    save_png(d / "rgb.png", np.stack([x * 4, y * 6, x + y], axis=-1).astype(np.uint8))
    save_png(d / "gray.png", np.repeat((x * 4).astype(np.uint8)[:, :, None], 3, axis=2))
    save_png(d / "mask.png", np.repeat(np.where(x < 28, 255, 0).astype(np.uint8)[:, :, None], 3, axis=2))
    save_png(d / "one.png", np.zeros((1, 1, 3), np.uint8))
    (d / "empty.png").write_bytes(b"")
    (d / "text.png").write_text("not an image")
    return d


@settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(arguments)
def test_generate_never_crashes(tiny_eps, files, tmp_path_factory, args):
    values, switches = args
    out = tmp_path_factory.mktemp("fuzz")
    argv = ["generate", "--model", str(tiny_eps.ov_dir), "--prompt", "a fox", "--steps", "2", "--width", "32",
            "--height", "32", "--quiet"]
    for flag, value in values.items():
        if flag in ("--init-image", "--mask"):
            value = str(files / value)
        elif flag == "--output":
            value = str(out / value) if value else value
        argv += [flag, value]
    if "--output" not in values:
        argv += ["--output", str(out / "o.png")]
    argv += switches
    result = CliRunner().invoke(app, argv)

    assert result.exception is None or isinstance(result.exception, SystemExit), (argv, repr(result.exception))
    assert "internal error" not in result.output, (argv, result.output)
    assert result.exit_code in (0, 1, 2), (argv, result.exit_code, result.output)
    event(f"exit {result.exit_code}")  # pytest --hypothesis-show-statistics shows the mix
    assert "Traceback" not in result.output, argv
    errors = [line for line in result.stderr.splitlines() if line.startswith(("sdcli: error:", "Error:"))]
    if result.exit_code == 0:
        assert not errors, (argv, result.stderr)
        assert any(p.suffix == ".png" for p in out.rglob("*.png")), (argv, result.stderr)
    else:
        assert len(errors) == 1, (argv, result.stderr)
        if result.exit_code == 1:  # a failure during a valid run: finished images may stay
            assert len(result.stderr.strip().splitlines()) == 1, (argv, result.stderr)
        else:
            assert not list(out.rglob("*.png")), (argv, "a refused run wrote an image")
    assert not [p for p in out.rglob("*") if p.name.endswith(".part")], argv
