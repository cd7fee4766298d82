"""A ControlNet that averages its residuals over the picture (diffusers' global_pool_conditions;
A1111's global_average_pooling, which the extension gives an SD 1.x single file with "shuffle"
in its name: control_v11e_sd15_shuffle): its A1111 file converted by name, then generate
against diffusers' StableDiffusionControlNetPipeline, which runs such a ControlNet on the
prompt's row only (guess mode's rule) with its residuals unscaled by logspace."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from tests.controlnets import diffusers_controlnet, moved, sdcli_controlnet


@pytest.fixture(scope="module")
def pooled(tiny_eps, tiny_controlnets, tmp_path_factory):
    """A tiny random pooling ControlNet, saved as an A1111 file named as the shuffle ControlNet's
    and converted by `sdcli convert` (no --config: its pooling told by the name alone)."""
    from safetensors.torch import save_file
    from typer.testing import CliRunner

    from sdcli.cli.app import app
    from tests.controlnets import ldm_controlnet

    root = tmp_path_factory.mktemp("pooled")
    _, model, ldm = ldm_controlnet(tiny_eps, root / "src", seed=7, global_pool_conditions=True)
    file = root / "control_v11e_sd15_shuffle.safetensors"
    save_file({"control_model." + name: tensor for name, tensor in ldm.items()}, file)
    folder = root / "ControlNet"
    result = CliRunner().invoke(app, ["convert", str(file), "--weight-format", "fp32", "--controlnet-dir",
                                      str(folder), "--quiet"])
    assert result.exit_code == 0, result.output
    return SimpleNamespace(folder=folder, images=tiny_controlnets.images, model=lambda name: model)


def test_the_shuffle_file_pools_and_generate_matches_diffusers(pooled, tiny_eps, tmp_path, parity_log):
    from tests.controlnets import SCHEDULER, SIZE, STEPS
    from tests.reference import compare, sdcli_pixels

    config = json.loads((pooled.folder / "control_v11e_sd15_shuffle" / "config.json").read_text())
    assert config["global_pool_conditions"] is True  # told by the file's name, as the extension tells it
    unit = dict(name="control_v11e_sd15_shuffle", image=pooled.images["a"])
    ours = sdcli_controlnet(tiny_eps, pooled, tmp_path, "ours", [unit])
    theirs = diffusers_controlnet(tiny_eps, pooled, [unit])
    compare(ours, theirs, parity_log, model="epsilon", scheduler=SCHEDULER, mode="cn pooled", size="64x64")
    other = sdcli_controlnet(tiny_eps, pooled, tmp_path, "other", [dict(unit, image=pooled.images["b"])])
    # "ControlNet is more important": diffusers' guess mode, which a pooling ControlNet has anyway
    guess = sdcli_controlnet(tiny_eps, pooled, tmp_path, "guess", [unit], "--control-mode", "controlnet")
    no_control = sdcli_pixels(tiny_eps.ov_dir, tmp_path / "plain.png", steps=STEPS, scheduler=SCHEDULER, width=SIZE,
                              height=SIZE)
    print(f"pooled ControlNet: max {np.abs(ours - theirs).max()} vs diffusers; moved {moved(ours, no_control)} from "
          f"no unit, {moved(ours, other)} from another control image; guess mode {moved(ours, guess)} from it")
    assert moved(ours, no_control) > 2 and moved(ours, other) > 2
    assert moved(ours, guess) == 0
