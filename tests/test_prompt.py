"""A1111 prompt syntax and long prompts."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sdcli.engine.prompt_syntax import CHUNK, chunk_prompt, parse_emphasis
from tests.reference import compare, diffusers_pixels

OPTIMUM_TINY = Path(__file__).parent / "data" / "optimum-tiny"


@pytest.mark.parametrize(
    "text,expected",
    [
        ("a cat", [("a cat", 1.0)]),
        ("a (red) cat", [("a ", 1.0), ("red", 1.1), (" cat", 1.0)]),
        ("((red))", [("red", 1.1 * 1.1)]),
        ("[cat]", [("cat", 1 / 1.1)]),
        ("(red:1.5) cat", [("red", 1.5), (" cat", 1.0)]),
        ("((red:1.5))", [("red", 1.5 * 1.1)]),
        ("a \\(literal\\) x", [("a (literal) x", 1.0)]),
        ("open (never closed", [("open ", 1.0), ("never closed", 1.1)]),
        ("stray ) and ] brackets", [("stray ) and ] brackets", 1.0)]),
        ("time 10:30 (x:0.5)", [("time 10:30 ", 1.0), ("x", 0.5)]),
        ("", [("", 1.0)]),
    ],
)
def test_parse_emphasis(text, expected):
    got = parse_emphasis(text)
    assert [f for f, _ in got] == [f for f, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected])


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab (:)[]\\1.5,")), max_size=40))
def test_parse_emphasis_never_fails_and_keeps_the_words(text):
    pairs = parse_emphasis(text)
    assert all(w > 0 for _, w in pairs)
    joined = "".join(f for f, _ in pairs)
    assert [c for c in joined if c in "ab"] == [c for c in text if c in "ab"]


def test_chunks_are_77_tokens_and_break_at_commas():
    bos, eos, pad, comma = 1, 2, 3, 9
    tokens = [5] * 70 + [comma] + [6] * 20
    chunks = chunk_prompt(tokens, [1.0] * len(tokens), bos, eos, pad, comma)
    assert [len(c.ids) for c in chunks] == [CHUNK + 2, CHUNK + 2]
    assert chunks[0].ids[:2] == [bos, 5] and chunks[0].ids[71] == comma and chunks[0].ids[72] == eos
    assert chunks[1].ids[1:21] == [6] * 20 and chunks[1].ids[21] == eos
    assert chunk_prompt([], [], bos, eos, pad, comma)[0].ids == [bos, eos] + [pad] * CHUNK


def test_plain_prompt_tokens_match_diffusers(tiny_eps):
    from sdcli.engine.engine import Engine
    from sdcli.engine.request import GenerationRequest

    engine = Engine(tiny_eps.ov_dir, precision="f32", cache_dir=None)
    tokenizer = tiny_eps.pipe().tokenizer
    for text in ["a photo of an astronaut riding a horse", "", "Hello, World!! ÜNÏ"]:
        chunked, warnings = engine.family.prompt_chunks(GenerationRequest(prompt=text, negative_prompt=""), guidance=False)
        ref = tokenizer(text, padding="max_length", max_length=77, truncation=True).input_ids
        assert chunked[0][0].ids == ref and not warnings


def _reference_embeddings(model, chunked) -> list:
    """A1111's long-prompt embedding computed with the torch text encoder."""
    import torch

    rows = []
    for chunks in chunked:
        parts = []
        for chunk in chunks:
            with torch.no_grad():
                z = model.pipe().text_encoder(torch.tensor([chunk.ids]))[0]
            w = torch.tensor(chunk.weights)
            if (w != 1).any():
                mean = z.mean()
                z = z * w[None, :, None]
                z = z * (mean / z.mean())
            parts.append(z)
        rows.append(torch.cat(parts, dim=1))
    return rows


def test_long_weighted_prompt_matches_diffusers_with_the_same_embeddings(tiny_eps, tmp_path):
    """Chunked (154-token) and weighted embeddings fed to diffusers give sdcli's pixels."""
    from sdcli.imaging.image_io import read_rgb
    from sdcli.engine.engine import Engine
    from sdcli.engine.request import GenerationRequest

    prompt = "a (red:1.4) fox, " + ", ".join(["in a [dark] wood"] * 12)
    negative = "blurry"
    engine = Engine(tiny_eps.ov_dir, precision="f32", cache_dir=None)
    chunked, warnings = engine.family.prompt_chunks(GenerationRequest(prompt=prompt, negative_prompt=negative), guidance=True)
    assert len(chunked[0]) == len(chunked[1]) >= 2 and not warnings
    neg, pos = _reference_embeddings(tiny_eps, chunked)

    theirs = diffusers_pixels(tiny_eps.pipe().components, "euler", steps=6, seed=3, prompt=None, negative=None,
                              width=64, height=64, prompt_embeds=pos, negative_prompt_embeds=neg)

    out = tmp_path / "long.png"
    r = subprocess.run([sys.executable, "-m", "sdcli", "generate", "--model", str(tiny_eps.ov_dir), "--prompt", prompt,
                        "--negative-prompt", negative, "--steps", "6", "--seed", "3", "--scheduler", "euler",
                        "--width", "64", "--height", "64", "--precision", "f32", "--output", str(out), "--quiet"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "truncated" not in r.stderr
    compare(read_rgb(out).astype(np.int16), theirs, None)


def test_emphasis_changes_the_image_and_can_be_turned_off(tiny_eps, tmp_path):
    from sdcli.imaging.image_io import read_rgb

    def run(prompt, *extra):
        out = tmp_path / f"{len(list(tmp_path.iterdir()))}.png"
        r = subprocess.run([sys.executable, "-m", "sdcli", "generate", "--model", str(tiny_eps.ov_dir), "--prompt",
                            prompt, "--steps", "3", "--seed", "1", "--width", "64", "--height", "64", "--precision",
                            "f32", "--output", str(out), "--quiet", *extra], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        return read_rgb(out).astype(int)

    plain = run("a red fox")
    weighted = run("a (red:1.5) fox")
    literal = run("a (red:1.5) fox", "--no-emphasis")
    assert np.abs(plain - weighted).max() > 10
    assert np.abs(weighted - literal).max() > 10


def test_fixed_length_unet_truncates_with_a_warning(tmp_path):
    out = tmp_path / "o.png"
    long_prompt = " ".join(["word"] * 120)
    r = subprocess.run([sys.executable, "-m", "sdcli", "generate", "--model", str(OPTIMUM_TINY), "--prompt", long_prompt,
                        "--steps", "2", "--seed", "1", "--width", "64", "--height", "64", "--output", str(out), "--quiet"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "warning: the prompt is longer than 75 tokens and was truncated" in r.stderr
    assert out.is_file()
