"""optimum-cli's own exports of FLUX.2-klein and Z-Image run in sdcli: `optimum-cli export openvino
--task text-to-image --weight-format fp32` (optimum-intel 2.2.0, in the separate .venv-oi that
scripts/optimum-venv.sh builds) of the tiny diffusers folders the other tests build; `sdcli
generate --rng torch --precision f32` on them, with no --steps or --guidance-scale (the folders
have no sdcli.json: the family's defaults apply), gives diffusers' pixels within 2 of 255, and
another prompt moves the picture by more than that.

Where optimum's layout is not sdcli's: the transformer's output is `out_sample` (klein) or
`sample` (Z-Image) for `out_hidden_states`; klein's text encoder exports every hidden state,
named one behind its tensor (runtime/components.py stacked_outputs), and its config.json has no
hidden_states_layers.  FastSD CPU's layout (one `prompt_embeds` output, the layers side by side)
is checked on an IR made from sdcli's.

Skipped where .venv-oi is absent (the README's test command does not build it).
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.reference import compare, sdcli_pixels

OPTIMUM_CLI = Path(__file__).resolve().parents[1] / ".venv-oi" / "bin" / "optimum-cli"
PROMPT = "a photo of an astronaut riding a horse"
OTHER = "a red house by the sea at night"
SEED = 1234
WIDTH, HEIGHT = 64, 48
TOLERANCE = 2


@pytest.fixture(scope="session")
def optimum_exports(tiny_klein, tiny_z_image, models_root):
    """{"klein": folder, "z-image": folder}: both tiny diffusers folders exported by optimum-cli
    (the two exports run side by side, once per session)."""
    if not OPTIMUM_CLI.is_file():
        pytest.skip(f"{OPTIMUM_CLI} is absent: optimum-intel lives in its own venv (scripts/optimum-venv.sh)")
    folders, jobs = {}, []
    for key, source in (("klein", tiny_klein[0]), ("z-image", tiny_z_image[0])):
        folders[key] = models_root / f"{source.name}-optimum"
        command = [str(OPTIMUM_CLI), "export", "openvino", "--model", str(source), "--task", "text-to-image",
                   "--weight-format", "fp32", str(folders[key])]
        jobs.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for job in jobs:
        output, _ = job.communicate(timeout=600)
        assert job.returncode == 0, output[-3000:]
    return folders


def diffusers_pixels(pipe, prompt: str, steps: int, guidance: float) -> np.ndarray:
    import torch

    image = pipe(prompt=prompt, height=HEIGHT, width=WIDTH, num_inference_steps=steps, guidance_scale=guidance,
                 generator=torch.Generator("cpu").manual_seed(SEED), output_type="np").images
    return (image[0] * 255).round().astype(np.int16)


_PICTURES: dict = {}  # each picture made once (the tests share some)


def ours(folder, out, prompt: str, *extra) -> np.ndarray:
    """sdcli generate with the folder's defaults (no --steps, --guidance-scale)."""
    key = (str(folder), prompt, tuple(map(str, extra)))
    if key not in _PICTURES:
        _PICTURES[key] = sdcli_pixels(folder, out, *extra, prompt=prompt, steps=None, negative=None, width=WIDTH,
                                      height=HEIGHT, seed=SEED)
    return _PICTURES[key]


def output_names(xml: Path) -> list[set[str]]:
    import openvino as ov

    return [output.get_names() for output in ov.Core().read_model(xml).outputs]


def test_the_layouts_differ_where_sdcli_reads_both(optimum_exports, tiny_klein, tiny_z_image):
    """What the loader has to bridge (if optimum changes its layout, this says so first)."""
    klein = optimum_exports["klein"]
    assert not (klein / "sdcli.json").exists() and not (optimum_exports["z-image"] / "sdcli.json").exists()
    assert "hidden_states_layers" not in json.loads((klein / "text_encoder" / "config.json").read_text())
    names = set().union(*output_names(klein / "text_encoder" / "openvino_model.xml"))
    assert {"last_hidden_state", "hidden_states.0", "hidden_states.27"} <= names and "hidden_states.28" not in names
    assert output_names(klein / "transformer" / "openvino_model.xml") == [{"out_sample"}]
    assert output_names(optimum_exports["z-image"] / "transformer" / "openvino_model.xml") == [{"sample"}]
    assert output_names(tiny_klein[1] / "transformer" / "openvino_model.xml") == [{"out_hidden_states"}]


def test_klein_from_optimum_cli_matches_diffusers_and_the_prompt_moves_it(optimum_exports, tiny_klein, tmp_path,
                                                                          parity_log):
    folder, pipe = optimum_exports["klein"], tiny_klein[2]
    picture = ours(folder, tmp_path / "a.png", PROMPT)  # the distilled defaults: 4 steps, guidance 1
    compare(picture, diffusers_pixels(pipe, PROMPT, 4, 1.0), parity_log, model="flux2-klein (optimum-cli)",
            scheduler="flow_euler", mode="txt2img 4 steps", size=f"{WIDTH}x{HEIGHT}")
    moved = int(np.abs(ours(folder, tmp_path / "b.png", OTHER) - picture).max())
    parity_log.append({"model": "flux2-klein (optimum-cli)", "scheduler": "flow_euler",
                       "mode": "another prompt moves it by", "size": f"{WIDTH}x{HEIGHT}", "max": moved, "mean": 0.0})
    assert moved > TOLERANCE


def test_klein_s_hidden_states_read_by_their_names_would_be_off(optimum_exports, tiny_klein, tmp_path):
    """Reading optimum's `hidden_states.9/.18/.27` as named (what optimum-intel's own
    OVFlux2KleinPipeline does) is another picture: layers 10, 19 and 28, one behind."""
    literal = tmp_path / "literal"
    shutil.copytree(optimum_exports["klein"], literal)
    config = literal / "text_encoder" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "hidden_states_layers": [10, 19, 28]}))
    picture = ours(optimum_exports["klein"], tmp_path / "a.png", PROMPT)
    assert int(np.abs(ours(literal, tmp_path / "b.png", PROMPT) - picture).max()) > TOLERANCE


def test_z_image_from_optimum_cli_matches_diffusers_and_the_prompt_moves_it(optimum_exports, tiny_z_image, tmp_path,
                                                                            parity_log):
    folder, pipe = optimum_exports["z-image"], tiny_z_image[2]
    picture = ours(folder, tmp_path / "a.png", PROMPT)  # Z-Image-Turbo's defaults: 9 steps, guidance 0
    compare(picture, diffusers_pixels(pipe, PROMPT, 9, 0.0), parity_log, model="z-image (optimum-cli)",
            scheduler="flow_euler", mode="txt2img 9 steps", size=f"{WIDTH}x{HEIGHT}")
    moved = int(np.abs(ours(folder, tmp_path / "b.png", OTHER) - picture).max())
    parity_log.append({"model": "z-image (optimum-cli)", "scheduler": "flow_euler",
                       "mode": "another prompt moves it by", "size": f"{WIDTH}x{HEIGHT}", "max": moved, "mean": 0.0})
    assert moved > TOLERANCE


@pytest.mark.parametrize("family,flags", [("z-image", ["--init-image", "IMAGE", "--strength", "0.6"]),
                                          ("klein", ["--reference-image", "IMAGE"])])
def test_an_image_input_on_optimum_s_folder_gives_our_folder_s_picture(optimum_exports, tiny_klein, tiny_z_image,
                                                                       tmp_path, family, flags):
    """optimum's vae_encoder (`latent_parameters`) as sdcli's: Z-Image's img2img and klein's
    reference image paint on its folder what they paint on sdcli's (which its parity tests hold
    to diffusers'); the image moves the picture."""
    from sdcli.imaging.image_io import save_png

    image = tmp_path / "image.png"
    save_png(image, (np.random.default_rng(1).random((70, 100, 3)) * 255).astype(np.uint8))
    flags = [str(image) if flag == "IMAGE" else flag for flag in flags]
    folder = (tiny_z_image if family == "z-image" else tiny_klein)[1]
    theirs = ours(optimum_exports[family], tmp_path / "a.png", PROMPT, *flags)
    assert int(np.abs(theirs - ours(folder, tmp_path / "b.png", PROMPT, *flags)).max()) <= TOLERANCE
    assert int(np.abs(theirs - ours(optimum_exports[family], tmp_path / "c.png", PROMPT)).max()) > TOLERANCE


def test_fastsd_cpu_s_stacked_prompt_embeds_give_sdcli_s_picture(tiny_klein, tmp_path):
    """A klein text encoder with one `prompt_embeds` output (the three layers side by side, as
    FastSD CPU's) and no hidden_states_layers: made from sdcli's IR, it gives sdcli's picture."""
    import openvino as ov

    folder = tmp_path / "fastsd"
    shutil.copytree(tiny_klein[1], folder)
    xml = folder / "text_encoder" / "openvino_model.xml"
    model = ov.Core().read_model(tiny_klein[1] / "text_encoder" / "openvino_model.xml")  # (not the copy: mapped)
    states = {next(iter(r.output(0).get_names())): r.input_value(0) for r in model.get_results()}
    stacked = ov.opset13.result(ov.opset13.concat([states[f"hidden_states.{k}"] for k in (9, 18, 27)], axis=-1))
    stacked.output(0).set_names({"prompt_embeds"})
    ov.save_model(ov.Model([stacked], model.get_parameters(), "fastsd"), xml, compress_to_fp16=False)
    config = folder / "text_encoder" / "config.json"
    config.write_text(json.dumps({k: v for k, v in json.loads(config.read_text()).items()
                                  if k != "hidden_states_layers"}))
    assert output_names(xml) == [{"prompt_embeds"}]
    theirs = ours(folder, tmp_path / "a.png", PROMPT)
    assert int(np.abs(theirs - ours(tiny_klein[1], tmp_path / "b.png", PROMPT)).max()) == 0


def test_stacked_outputs_reads_the_three_layouts():
    from sdcli.runtime.components import stacked_outputs
    from sdcli.util.errors import UsageError

    ours_ = [{"hidden_states.9"}, {"hidden_states.18"}, {"hidden_states.27"}]
    assert stacked_outputs(ours_, [9, 18, 27], 28, "te") == [0, 1, 2]
    optimum = [{"last_hidden_state"}] + [{f"hidden_states.{i}"} for i in range(28)]
    assert stacked_outputs(optimum, [9, 18, 27], 28, "te") == [9, 18, 27]  # hidden_states.8, .17, .26
    assert stacked_outputs(optimum, [0, 1], 28, "te") == [0, 1]
    assert stacked_outputs([{"prompt_embeds"}], [9, 18, 27], None, "te") == [0]
    with pytest.raises(UsageError, match="no output hidden_states.27"):
        stacked_outputs(ours_[:2], [9, 18, 27], 28, "te")

