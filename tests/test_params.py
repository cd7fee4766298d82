"""The PNG `parameters` text: round trip, --from-image and `sdcli info IMAGE.png`."""
from __future__ import annotations

import json
import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st

from sdcli.imaging.image_io import read_png_text
from sdcli.imaging.params import format_parameters, parse_parameters

text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=60)


@settings(max_examples=300, deadline=None)
@given(
    prompt=text.filter(lambda s: not s.lstrip().startswith("Negative prompt:") and "\nNegative prompt:" not in s),
    negative=text.map(lambda s: s.replace("\n", " ")),
    model=st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=20).filter(lambda s: s.strip() == s),
    steps=st.integers(1, 1000),
    seed=st.integers(0, 2**64 - 1),
)
def test_parameters_round_trip(prompt, negative, model, steps, seed):
    fields = {"Steps": steps, "Sampler": "Euler a", "CFG scale": "7.5", "Seed": seed, "Size": "512x768", "Model": model}
    got_prompt, got_negative, got = parse_parameters(format_parameters(prompt, negative, fields))
    assert got_prompt == prompt
    assert got_negative == negative.lstrip(" ")
    assert got == {k: str(v) for k, v in fields.items()}


def run(*args):
    return subprocess.run([sys.executable, "-m", "sdcli", *map(str, args)], capture_output=True, text=True, timeout=300)


def test_from_image_redoes_the_image_byte_for_byte_and_takes_overrides(tiny_eps, tmp_path):
    first = tmp_path / "first.png"
    r = run("generate", "--model", tiny_eps.ov_dir, "--prompt", 'a "quoted", (red) fox', "--negative-prompt",
            "rain, snow", "--steps", "3", "--seed", "7", "--width", "64", "--height", "64", "--precision", "f32",
            "--scheduler", "euler_a", "--output", first, "--quiet")
    assert r.returncode == 0, r.stderr
    again = tmp_path / "again.png"
    r = run("generate", "--model", tiny_eps.ov_dir, "--from-image", first, "--output", again, "--quiet")
    assert r.returncode == 0, r.stderr
    assert again.read_bytes() == first.read_bytes()

    other = tmp_path / "other.png"
    r = run("generate", "--model", tiny_eps.ov_dir, "--from-image", first, "--seed", "8", "--output", other, "--quiet")
    assert r.returncode == 0, r.stderr
    params = read_png_text(other)["parameters"]
    assert "Seed: 8," in params and "Sampler: Euler a" in params and params.startswith('a "quoted", (red) fox\n')
    assert other.read_bytes() != first.read_bytes()

    r = run("info", first, "--json")
    assert r.returncode == 0
    info = json.loads(r.stdout)
    assert info["prompt"] == 'a "quoted", (red) fox' and info["Seed"] == "7" and info["negative_prompt"] == "rain, snow"


def test_from_image_without_settings_is_a_clear_error(tmp_path):
    from sdcli.imaging.image_io import save_png
    import numpy as np

    bare = tmp_path / "bare.png"
    save_png(bare, np.zeros((8, 8, 3), np.uint8))
    r = run("generate", "--from-image", bare, "--output", tmp_path / "o.png")
    assert r.returncode == 2 and "no generation settings" in r.stderr
    r = run("info", bare)
    assert r.returncode == 2 and "no generation settings" in r.stderr
