"""Single-file transformer checkpoints (ComfyUI / civitai): `sdcli convert model.safetensors
--config DIR`, where the file holds only the transformer's weights and DIR is a diffusers folder
of the same family giving the text encoder, VAE, tokenizer and scheduler.

The tiny klein's transformer written in Black Forest Labs' names and the tiny Z-Image's in
Tongyi-MAI's under ComfyUI's prefix (tests/transformer_single_file.py, checked here to read back
through diffusers' from_single_file to the same weights) convert to folders that paint the folder
conversion's pictures (max <= 2 of 255); a perturbed file moves the picture by more than that; a
file in diffusers' names gives the folder conversion's transformer byte for byte.  Mistakes (no
--config, the other family's --config, a UNet checkpoint with a transformer folder as --config):
one line, exit 2, nothing written.
"""
from __future__ import annotations

import numpy as np
import pytest

from tests.reference import sdcli_pixels
from tests.transformer_single_file import flux2_original_state_dict, z_image_original_state_dict

PROMPT = "a photo of an astronaut riding a horse"
SEED = 1234
WIDTH, HEIGHT = 64, 48
TOLERANCE = 2


def transformer_state(diffusers_dir, family: str) -> dict:
    import torch
    from diffusers import Flux2Transformer2DModel, ZImageTransformer2DModel

    cls = Flux2Transformer2DModel if family == "klein" else ZImageTransformer2DModel
    model = cls.from_pretrained(diffusers_dir, subfolder="transformer", torch_dtype=torch.float32)
    return {name: tensor.detach().clone().contiguous() for name, tensor in model.state_dict().items()}


def original_file(diffusers_dir, family: str, path, scale_output: float = 1.0):
    """The transformer of `diffusers_dir` in the original names at `path`; `scale_output`
    multiplies its output projection (a perturbed file)."""
    from safetensors.torch import save_file

    state = transformer_state(diffusers_dir, family)
    out_name = "proj_out.weight" if family == "klein" else "all_final_layer.2-1.linear.weight"
    state[out_name] = state[out_name] * scale_output
    original = flux2_original_state_dict(state) if family == "klein" else z_image_original_state_dict(state)
    save_file({name: tensor.contiguous() for name, tensor in original.items()}, str(path))
    return path


def convert_cli(*args):
    from typer.testing import CliRunner

    from sdcli.cli.app import app

    return CliRunner().invoke(app, ["convert", *map(str, args), "--quiet"])


def reusing_text_encoder_and_vae(monkeypatch, converted):
    """Conversions from here on export the transformer as ever (from the file, through `sdcli
    convert`) but copy text_encoder/, vae_encoder/ and vae_decoder/ from the folder `converted`,
    which a conversion from the same --config folder wrote (the same IR: they are exported from
    --config's folders alone).  Those exports are most of a tiny conversion's time; the tests
    that use this assert on the transformer's part."""
    import dataclasses
    import shutil

    import sdcli.convert.export as export
    import sdcli.convert.transformer_pipeline as transformer_pipeline

    def copy(*names):
        def exporter(_model, out, *args, **kwargs):
            for name in names:
                shutil.copytree(converted / name, out / name)
        return exporter

    families = tuple(dataclasses.replace(family, export_text_encoder=copy("text_encoder"))
                     for family in export.transformer_pipelines())
    monkeypatch.setattr(export, "transformer_pipelines", lambda: families)
    monkeypatch.setattr(transformer_pipeline, "export_vae", copy("vae_encoder", "vae_decoder"))


def pixels(folder, out) -> np.ndarray:
    return sdcli_pixels(folder, out, prompt=PROMPT, steps=None, negative=None, width=WIDTH, height=HEIGHT, seed=SEED)


@pytest.fixture(scope="module")
def fixtures(tiny_klein, tiny_z_image):
    return {"klein": tiny_klein, "z-image": tiny_z_image}


@pytest.mark.parametrize("family", ["klein", "z-image"])
def test_the_original_names_read_back_through_diffusers(fixtures, family, tmp_path):
    """The test's writer is the inverse of diffusers' converter: from_single_file gives the same weights."""
    import torch
    from diffusers import Flux2Transformer2DModel, ZImageTransformer2DModel
    from safetensors.torch import load_file

    source = fixtures[family][0]
    path = original_file(source, family, tmp_path / "t.safetensors")
    state = {k.removeprefix("model.diffusion_model."): v for k, v in load_file(str(path)).items()}
    assert not any(k.startswith(("transformer_blocks.", "all_final_layer")) for k in state)  # not diffusers' names
    cls = Flux2Transformer2DModel if family == "klein" else ZImageTransformer2DModel
    back = cls.from_single_file(state, config=str(source), subfolder="transformer", torch_dtype=torch.float32)
    expected = transformer_state(source, family)
    assert set(back.state_dict()) == set(expected)
    assert all(torch.equal(back.state_dict()[k], v) for k, v in expected.items())


@pytest.mark.parametrize("family", ["klein", "z-image"])
def test_a_single_file_transformer_paints_the_folder_s_picture_and_its_weights_matter(fixtures, family, tmp_path,
                                                                                     parity_log, monkeypatch):
    source, folder, _ = fixtures[family]
    path = original_file(source, family, tmp_path / f"{family}.safetensors")
    if family == "z-image":  # klein's conversion exports its text encoder and VAE from --config; Z-Image's copies
        reusing_text_encoder_and_vae(monkeypatch, folder)  # the folder's (the same exports), to save test time
    result = convert_cli(path, "--config", source, "--weight-format", "fp32", "--output", tmp_path / "one")
    assert result.exit_code == 0, result.output
    picture = pixels(tmp_path / "one", tmp_path / "a.png")
    reference = pixels(folder, tmp_path / "b.png")
    diff = int(np.abs(picture - reference).max())
    parity_log.append({"model": f"{family} single-file transformer", "scheduler": "flow_euler",
                       "mode": "vs the folder's conversion", "size": f"{WIDTH}x{HEIGHT}", "max": diff,
                       "mean": float(np.abs(picture - reference).mean())})
    assert diff <= TOLERANCE and reference.std() > 10
    perturbed = original_file(source, family, tmp_path / "p.safetensors", scale_output=1.5)
    reusing_text_encoder_and_vae(monkeypatch, tmp_path / "one")  # only the transformer differs
    assert convert_cli(perturbed, "--config", source, "--weight-format", "fp32", "--output",
                       tmp_path / "two").exit_code == 0
    moved = int(np.abs(pixels(tmp_path / "two", tmp_path / "c.png") - picture).max())
    parity_log.append({"model": f"{family} single-file transformer", "scheduler": "flow_euler",
                       "mode": "its output projection x1.5 moves it by", "size": f"{WIDTH}x{HEIGHT}", "max": moved,
                       "mean": 0.0})
    assert moved > TOLERANCE


def test_a_file_in_diffusers_names_gives_the_folder_s_transformer(tiny_z_image, tmp_path, monkeypatch):
    source, folder, _ = tiny_z_image
    reusing_text_encoder_and_vae(monkeypatch, folder)  # what is compared is the transformer
    path = source / "transformer" / "diffusion_pytorch_model.safetensors"
    result = convert_cli(path, "--config", source, "--weight-format", "fp32", "--output", tmp_path / "one")
    assert result.exit_code == 0, result.output
    ours = (tmp_path / "one" / "transformer" / "openvino_model.bin").read_bytes()
    assert ours == (folder / "transformer" / "openvino_model.bin").read_bytes()


@pytest.mark.parametrize("case,message", [
    ("no-config", "holds a FLUX.2-klein transformer alone: pass --config DIR"),
    ("other-family", "holds a FLUX.2-klein transformer, but --config"),
    ("unet-file", "holds no FLUX.2-klein transformer"),
    ("hub-config-offline", "cannot download nobody/no-such-klein"),
])
def test_mistakes_are_one_line_and_write_nothing(tiny_klein, tiny_z_image, tiny_eps, tmp_path, case, message,
                                                 monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    klein_file = original_file(tiny_klein[0], "klein", tmp_path / "klein.safetensors")
    unet_file = tiny_eps.diffusers_dir / "unet" / "diffusion_pytorch_model.safetensors"
    args = {"no-config": [klein_file],
            "other-family": [klein_file, "--config", tiny_z_image[0]],
            "unet-file": [unet_file, "--config", tiny_klein[0]],
            "hub-config-offline": [klein_file, "--config", "nobody/no-such-klein"]}[case]
    out = tmp_path / "out"
    result = convert_cli(*args, "--output", out)
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert not out.exists()


def test_a_16_bit_file_is_loaded_in_its_own_type_unless_fp32(tiny_z_image, tmp_path):
    """As a folder's components (ir.load_dtype): a bf16 file stays bf16 for --weight-format fp16
    (traced with OpenVINO's 16-bit recipe), float32 for fp32."""
    import torch
    from safetensors.torch import save_file

    from sdcli.convert.transformer_pipeline import load_transformer_file
    from sdcli.convert.z_image import Z_IMAGE

    source = tiny_z_image[0]
    state = z_image_original_state_dict(transformer_state(source, "z-image"))
    path = tmp_path / "bf16.safetensors"
    save_file({name: tensor.to(torch.bfloat16).contiguous() for name, tensor in state.items()}, str(path))
    assert {p.dtype for p in load_transformer_file(Z_IMAGE, path, source, "fp16").parameters()} == {torch.bfloat16}
    assert {p.dtype for p in load_transformer_file(Z_IMAGE, path, source, "fp32").parameters()} == {torch.float32}
