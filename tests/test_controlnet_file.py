"""`sdcli convert` of A1111's single-file ControlNets (sdcli/convert/controlnet_file.py): the
config worked out from the tensors of SD 1.5, SD 2.1 and SDXL ControlNets (their shapes only, on
torch's meta device), and a tiny random ControlNet (every layer randomised, the zero convolutions
too) saved with the original LDM names, converted from the file and from its diffusers folder:
the same residuals as diffusers' ControlNetModel, the same pictures; pickles only with
--allow-pickle."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

SD15 = dict(block_out_channels=[320, 640, 1280, 1280], layers_per_block=2, cross_attention_dim=768,
            attention_head_dim=8, use_linear_projection=False,
            down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"])
SD21 = dict(SD15, cross_attention_dim=1024, attention_head_dim=[5, 10, 20, 20], use_linear_projection=True)
SDXL = dict(block_out_channels=[320, 640, 1280], layers_per_block=2, cross_attention_dim=2048,
            attention_head_dim=[5, 10, 20], use_linear_projection=True, transformer_layers_per_block=[1, 2, 10],
            down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)
REAL = {"sd15 control_model.": (SD15, "control_model."), "sd21 no prefix": (SD21, ""), "sdxl diffusers names": (SDXL, None),
        "sdxl ldm names": (SDXL, "control_model.")}


@pytest.mark.parametrize("case", list(REAL))
def test_config_from_real_shapes(case):
    """The config inferred from the tensor shapes of SD 1.5's, SD 2.1's and SDXL's ControlNet
    architectures (LDM names with and without control_model., and diffusers' names) is theirs,
    and diffusers' converter (with SDXL's label_emb added) names every tensor as the model does."""
    import torch
    from diffusers import ControlNetModel

    from sdcli.convert.controlnet_file import diffusers_state_dict, infer_config, layout, ldm_name, strip_prefix

    config, prefix = REAL[case]
    with torch.device("meta"):
        model = ControlNetModel(**config)
    state = model.state_dict()
    shapes = {name: tuple(t.shape) for name, t in state.items()}
    if prefix is not None:
        state = {prefix + ldm_name(name, shapes): tensor for name, tensor in state.items()}
        shapes = {name: tuple(t.shape) for name, t in state.items()}
    if prefix == "control_model.":  # ControlNet 1.0's files hold a whole SD model beside it: left out
        shapes.update({"model.diffusion_model.input_blocks.12.0.out_layers.3.weight": (7,),
                       "model.diffusion_model.middle_block.1.transformer_blocks.5.attn2.to_k.weight": (7, 7)})
    assert layout(shapes) == ("diffusers" if prefix is None else "ldm")
    inferred = infer_config(shapes)
    for key, value in config.items():
        assert inferred[key] == value, key
    assert inferred["conditioning_embedding_out_channels"] == [16, 32, 96, 256]
    renamed = diffusers_state_dict(strip_prefix(state), inferred, "file")
    assert {n: tuple(t.shape) for n, t in renamed.items()} == {n: tuple(t.shape) for n, t in model.state_dict().items()}
    with torch.device("meta"):
        rebuilt = ControlNetModel.from_config(inferred)
    assert {n: tuple(t.shape) for n, t in rebuilt.state_dict().items()} == \
        {n: tuple(t.shape) for n, t in model.state_dict().items()}


@pytest.fixture(scope="session")
def file_controlnet(tiny_eps, models_root):
    """A tiny random ControlNet for tiny_eps (8 heads and 32 groups, as an SD 1.x file is read),
    its diffusers folder, its A1111 files (.safetensors with control_model., .pth without), and
    the folder and the .safetensors converted at fp32 into one ControlNet folder."""
    import torch
    from safetensors.torch import save_file
    from typer.testing import CliRunner

    from sdcli.cli.app import app
    from tests.controlnets import ldm_controlnet

    root = models_root / "cn-file"
    source, model, ldm = ldm_controlnet(tiny_eps, root / "cn-src", seed=5)
    files = {"safetensors": root / "control_tiny_sd15.safetensors", "pth": root / "control_tiny_sd15.pth"}
    save_file({"control_model." + name: tensor for name, tensor in ldm.items()}, files["safetensors"])
    torch.save(ldm, files["pth"])
    folder = root / "ControlNet"
    for name, path in (("folder", source), ("file", files["safetensors"])):
        result = CliRunner().invoke(app, ["convert", str(path), "--weight-format", "fp32", "--output",
                                          str(folder / name), "--quiet"])
        assert result.exit_code == 0, result.output
    return SimpleNamespace(model=model, files=files, folder=folder, root=root)


def _residuals(ir_dir, inputs):
    import openvino as ov

    compiled = ov.Core().compile_model(str(ir_dir / "openvino_model.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    out = compiled(inputs)
    return [out[compiled.output(i)] for i in range(len(compiled.outputs))]


def _inputs():
    rs = np.random.default_rng(3)
    return {"sample": rs.standard_normal((2, 4, 8, 8)).astype(np.float32),
            "timestep": np.array([421.0, 421.0], np.float32),
            "encoder_hidden_states": rs.standard_normal((2, 77, 32)).astype(np.float32),
            "controlnet_cond": rs.random((2, 3, 16, 16)).astype(np.float32)}


def test_single_file_residuals_match_diffusers(file_controlnet):
    """The IR from the A1111 file gives diffusers' ControlNetModel's residuals (same weights),
    and the IR from the diffusers folder's."""
    import json

    import torch

    inputs = _inputs()
    with torch.no_grad():
        down, mid = file_controlnet.model(*(torch.from_numpy(inputs[k]) for k in inputs), return_dict=False)
    theirs = [t.numpy() for t in (*down, mid)]
    ours = _residuals(file_controlnet.folder / "file", inputs)
    folder = _residuals(file_controlnet.folder / "folder", inputs)
    assert len(ours) == len(theirs) == len(folder) == 5
    worst = max(np.abs(a - b).max() / np.abs(b).max() for a, b in zip(ours, theirs))
    to_folder = max(np.abs(a - b).max() / np.abs(b).max() for a, b in zip(ours, folder))
    print(f"single-file ControlNet residuals: max relative error {worst:.2e} vs diffusers, {to_folder:.2e} vs the "
          f"folder's IR; residual magnitudes {[float(np.abs(t).max()) for t in theirs]}")
    assert min(np.abs(t).max() for t in theirs) > 0.1  # the zero convolutions are not zero
    assert worst < 1e-4 and to_folder < 1e-4
    config = json.loads((file_controlnet.folder / "file" / "config.json").read_text())
    assert config["_class_name"] == "ControlNetModel" and config["attention_head_dim"] == 8
    assert not config.get("global_pool_conditions")  # (only a file named as the shuffle ControlNet pools)
    info = json.loads((file_controlnet.folder / "file" / "sdcli.json").read_text())
    assert info["weight_format"] == "fp32" and info["source"].endswith(".safetensors")


def test_single_file_generate_matches_folder(tiny_eps, tiny_controlnets, file_controlnet, tmp_path):
    """generate with the unit converted from the file equals generate with the folder's; the
    control image moves the picture."""
    from tests.controlnets import moved, sdcli_controlnet

    units = SimpleNamespace(folder=file_controlnet.folder)
    image, other = tiny_controlnets.images["a"], tiny_controlnets.images["b"]
    from_file = sdcli_controlnet(tiny_eps, units, tmp_path, "file", [dict(name="file", image=image)])
    from_folder = sdcli_controlnet(tiny_eps, units, tmp_path, "folder", [dict(name="folder", image=image)])
    other_image = sdcli_controlnet(tiny_eps, units, tmp_path, "other", [dict(name="file", image=other)])
    print(f"single-file ControlNet generate: max {moved(from_file, from_folder)} from the folder's unit, "
          f"another control image moves it {moved(from_file, other_image)}")
    assert moved(from_file, from_folder) <= 1
    assert moved(from_file, other_image) > 2


def test_pth_needs_allow_pickle(file_controlnet, tmp_path):
    """A .pth ControlNet is refused in one line (exit 2, nothing written) without --allow-pickle;
    with it, convert takes it for a ControlNet (not an upscaler, not an SD checkpoint), for
    --controlnet-dir/<stem>, and reads the same weights as the .safetensors file's (the export
    after that is the one test_single_file_residuals_match_diffusers checks)."""
    import torch
    from typer.testing import CliRunner

    from sdcli.cli.app import app
    from sdcli.cli.convert import default_target
    from sdcli.convert.controlnet_file import load_controlnet_file
    from sdcli.convert.options import ConvertOptions
    from sdcli.convert.sources import resolve_source
    from sdcli.convert.upscaler import upscaler_source

    pth, target = file_controlnet.files["pth"], tmp_path / "cn"
    refused = CliRunner().invoke(app, ["convert", str(pth), "--weight-format", "fp32", "--output", str(target)])
    assert refused.exit_code == 2, refused.output
    assert "--allow-pickle" in refused.output and len(refused.output.strip().splitlines()) == 1
    assert not target.exists()
    assert upscaler_source(str(pth), allow_pickle=True) is None
    assert resolve_source(str(pth), ConvertOptions(allow_pickle=True)) == ("controlnet", pth)
    assert default_target(str(pth), tmp_path / "controlnets", allow_pickle=True) == tmp_path / "controlnets" / pth.stem
    ours = load_controlnet_file(pth, allow_pickle=True).state_dict()
    theirs = file_controlnet.model.state_dict()
    assert set(ours) == set(theirs) and all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_not_a_controlnet_file_is_not_taken_for_one(tmp_path):
    from safetensors.numpy import save_file

    from sdcli.convert.controlnet_file import controlnet_file

    path = tmp_path / "other.safetensors"
    save_file({"input_blocks.0.0.weight": np.zeros((2, 2), np.float32)}, str(path))
    assert controlnet_file(path, allow_pickle=False) is None
    assert controlnet_file(tmp_path / "missing.pth", allow_pickle=True) is None
