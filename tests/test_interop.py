"""Folders sdcli writes work in openvino-genai, with the same pixels for the same noise."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sdcli.engine.engine import Engine
from sdcli.engine.request import GenerationRequest
from tests.reference import compare, diffusers_pixels, same_noise, sdcli_pixels

ov_genai = pytest.importorskip("openvino_genai", reason="openvino-genai is in the dev extras")


def test_openvino_genai_runs_our_folder_with_the_same_pixels(tiny_eps):

    pipe = ov_genai.Text2ImagePipeline(str(tiny_eps.ov_dir), "CPU", INFERENCE_PRECISION_HINT="f32")
    theirs = pipe.generate("a red fox", negative_prompt="rain", width=64, height=64, num_inference_steps=5,
                           guidance_scale=7.5, generator=same_noise(5)).data[0].astype(np.int16)
    engine = Engine(tiny_eps.ov_dir, precision="f32")
    ours = engine.generate(GenerationRequest(prompt="a red fox", negative_prompt="rain", steps=5, seed=5,
                                            width=64, height=64, scheduler="pndm")).image.astype(np.int16)
    compare(ours, theirs, None)


OPTIMUM_TINY = Path(__file__).parent / "data" / "optimum-tiny"


@pytest.mark.parametrize("scheduler", ["pndm", "euler"])
def test_folder_exported_by_optimum_cli_matches_diffusers(tiny_eps, scheduler, tmp_path, parity_log):
    """tests/data/optimum-tiny was written by `optimum-cli export openvino` (optimum-intel
    2.2.0) from the same random weights as the tiny_eps fixture (seed 0).  Its UNet
    broadcasts the int64 timestep before converting it; the engine still feeds Euler's
    fractional timesteps exactly."""
    theirs = diffusers_pixels(tiny_eps.pipe().components, scheduler, width=64, height=64)
    ours = sdcli_pixels(OPTIMUM_TINY, tmp_path / "out.png", scheduler=scheduler, width=64, height=64)
    compare(ours, theirs, parity_log, model="optimum-cli", scheduler=scheduler, mode="txt2img", size="64x64")
