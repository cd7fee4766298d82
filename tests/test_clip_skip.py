"""--clip-skip N (A1111's numbering) gives diffusers' pixels with clip_skip=N-1."""
from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from sdcli.cli.app import app
from sdcli.imaging.image_io import read_rgb
from tests.reference import NEGATIVE, PROMPT, compare, diffusers_pixels, generate_args

STEPS = 6


def run(model, tmp_path, *extra, name="out.png"):
    out = tmp_path / name
    return CliRunner().invoke(app, generate_args(model.ov_dir, out, *extra, steps=STEPS, width=64, height=64)), out


@pytest.mark.parametrize("clip_skip", [2, 3])
def test_clip_skip_matches_diffusers(tiny_eps, clip_skip, tmp_path, parity_log):
    import torch

    pipe = tiny_eps.pipe()
    encoder = pipe.text_encoder
    # diffusers' own clip_skip path reaches for text_encoder.text_model, which transformers 5
    # removed; this is what it computes (hidden_states[-(clip_skip + 1)], then the final norm)
    final_norm = getattr(encoder, "text_model", encoder).final_layer_norm

    def embed(text):
        ids = pipe.tokenizer(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        with torch.no_grad():
            hidden = encoder(ids, output_hidden_states=True).hidden_states[-clip_skip]
            return final_norm(hidden)

    theirs = diffusers_pixels(pipe.components, None, steps=STEPS, prompt=None, negative=None, width=64, height=64,
                              prompt_embeds=embed(PROMPT), negative_prompt_embeds=embed(NEGATIVE))
    result, out = run(tiny_eps, tmp_path, "--clip-skip", str(clip_skip))
    assert result.exit_code == 0, result.output
    ours = read_rgb(out).astype(np.int16)
    result, plain = run(tiny_eps, tmp_path, name="plain.png")
    assert np.abs(read_rgb(plain).astype(np.int16) - ours).max() > 2  # the option changes the image
    compare(ours, theirs, parity_log, model="epsilon", scheduler="pndm", mode=f"clip skip {clip_skip}", size="64x64")


def test_clip_skip_1_is_the_plain_path_and_is_redone_from_the_image(tiny_eps, tmp_path):
    _, plain = run(tiny_eps, tmp_path, name="plain.png")
    _, one = run(tiny_eps, tmp_path, "--clip-skip", "1", name="one.png")
    assert plain.read_bytes() == one.read_bytes()
    _, two = run(tiny_eps, tmp_path, "--clip-skip", "2", name="two.png")
    again = tmp_path / "again.png"
    result = CliRunner().invoke(app, ["generate", "--model", str(tiny_eps.ov_dir), "--from-image", str(two),
                                      "--output", str(again), "--quiet"])
    assert result.exit_code == 0, result.output
    assert again.read_bytes() == two.read_bytes()


def test_clip_skip_beyond_the_layers_is_a_usage_error(tiny_eps, tmp_path):
    result, out = run(tiny_eps, tmp_path, "--clip-skip", "4")  # the tiny text encoder has 2 layers
    assert result.exit_code == 2
    assert "--clip-skip 4" in result.output
    assert not out.exists()
