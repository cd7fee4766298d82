"""Single-file checkpoints (the civitai kind): `sdcli convert FILE.safetensors --config FOLDER`
on tiny models written in Stability's SDXL layout and the original SD 1.x layout by
tests/single_file.py, whose writer is checked by loading its files back with diffusers'
`from_single_file`; the converted folders against diffusers' pipelines on the original
diffusers folders (`generate --rng torch --precision f32`, max pixel difference <= 2 of 255)."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from sdcli.convert.export import ConvertOptions, convert
from sdcli.convert.sources import single_file_kind
from sdcli.util.errors import UsageError
from tests.reference import compare, diffusers_pixels, sdcli_pixels
from tests.single_file import build_wide_tiny_sdxl, write_sd_single_file, write_sdxl_single_file


@pytest.fixture(scope="module")
def sdxl_files(tmp_path_factory):
    """A tiny SDXL base (second text encoder wider than the first, as SDXL's) and the suite's tiny
    refiner shape, each a diffusers folder (not converted) and its single file."""
    from sdcli.convert.random_model import TINY_SDXL_REFINER, build_random_sdxl

    root = tmp_path_factory.mktemp("single-file")
    base = build_wide_tiny_sdxl(root / "base", seed=2)
    refiner = root / "refiner"
    build_random_sdxl(refiner, TINY_SDXL_REFINER, seed=4)
    return SimpleNamespace(root=root, base=base, base_file=write_sdxl_single_file(base, root / "base.safetensors"),
                           refiner=refiner, refiner_file=write_sdxl_single_file(refiner, root / "refiner.safetensors"))


def pipeline(kind: str, folder: Path, single_file: Path | None = None):
    """diffusers' pipeline of `kind` from `folder`, or from `single_file` with `folder` as its config."""
    import diffusers

    cls = {"sd": diffusers.StableDiffusionPipeline, "sdxl": diffusers.StableDiffusionXLPipeline,
           "sdxl-refiner": diffusers.StableDiffusionXLImg2ImgPipeline}[kind]
    extra = {"safety_checker": None} if kind == "sd" else {}
    if single_file is None:
        return cls.from_pretrained(folder, torch_dtype=torch.float32, **extra)
    return cls.from_single_file(str(single_file), config=str(folder), local_files_only=True,
                                torch_dtype=torch.float32, **extra)


def assert_same_weights(ours, theirs) -> int:
    """Every component's state dict equal, tensor for tensor; returns how many tensors."""
    count = 0
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        a, b = getattr(ours, name, None), getattr(theirs, name, None)
        assert (a is None) == (b is None), name
        if a is None:
            continue
        sa, sb = a.state_dict(), b.state_dict()
        assert sorted(sa) == sorted(sb), name
        unequal = [k for k in sa if sa[k].is_meta or not torch.equal(sa[k], sb[k])]
        assert not unequal, f"{name}: {unequal[:5]}"
        count += len(sa)
    return count


@pytest.mark.parametrize("kind", ["sdxl", "sdxl-refiner"])
def test_writer_gives_what_diffusers_single_file_loader_reads_back(sdxl_files, kind):
    from safetensors import safe_open

    folder, single = (sdxl_files.base, sdxl_files.base_file) if kind == "sdxl" else \
        (sdxl_files.refiner, sdxl_files.refiner_file)
    with safe_open(str(single), framework="pt") as f:
        keys = set(f.keys())
    open_clip = f"conditioner.embedders.{1 if kind == 'sdxl' else 0}.model."
    for key in ["model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.label_emb.0.0.weight",
                "first_stage_model.decoder.up.0.block.0.conv1.weight", open_clip + "positional_embedding",
                open_clip + "transformer.resblocks.0.attn.in_proj_weight", open_clip + "text_projection"]:
        assert key in keys, key
    assert ("conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight" in keys) == \
        (kind == "sdxl")
    tensors = assert_same_weights(pipeline(kind, folder, single), pipeline(kind, folder))
    # the file holds those tensors and nothing else (q, k and v weights and biases are 2 in OpenCLIP's layers)
    assert tensors == len(keys) + 4 * sum(k.endswith(".attn.in_proj_weight") for k in keys)


def test_single_file_kind_tells_base_refiner_and_sd_apart(sdxl_files, tmp_path):
    assert single_file_kind(sdxl_files.base_file) == "sdxl"
    assert single_file_kind(sdxl_files.refiner_file) == "sdxl-refiner"
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(sdxl_files.base_file))
    sd_like = {k: v for k, v in tensors.items() if not k.startswith("conditioner.")}
    sd_like.update({k.replace("conditioner.embedders.0.", "cond_stage_model."): v for k, v in tensors.items()
                    if k.startswith("conditioner.embedders.0.")})
    save_file(sd_like, str(tmp_path / "sd.safetensors"))
    assert single_file_kind(tmp_path / "sd.safetensors") == "sd"


def convert_single_file(single: Path, config: Path, out: Path) -> Path:
    """`sdcli convert SINGLE --config CONFIG --output OUT --weight-format fp32 --quiet`, in this process."""
    from typer.testing import CliRunner

    from sdcli.cli.app import app

    result = CliRunner().invoke(app, ["convert", str(single), "--config", str(config), "--output", str(out),
                                      "--weight-format", "fp32", "--quiet"])
    assert result.exit_code == 0, result.output
    return out


def test_sdxl_single_file_converts_to_diffusers_pixels(sdxl_files, tmp_path, parity_log):
    out = convert_single_file(sdxl_files.base_file, sdxl_files.base, sdxl_files.root / "base-ov")
    import json

    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline" and "text_encoder_2" in index
    components = dict(pipeline("sdxl", sdxl_files.base).components)  # the diffusers folder, not the file
    theirs = diffusers_pixels(components, "euler", xl=True, width=64, height=64)
    ours = sdcli_pixels(out, tmp_path / "out.png", scheduler="euler", width=64, height=64)
    compare(ours, theirs, parity_log, model="sdxl 1-file", scheduler="euler", mode="txt2img", size="64x64")


def test_sdxl_refiner_single_file_converts_to_diffusers_pixels(sdxl_files, init_image_file, tmp_path, parity_log):
    out = convert_single_file(sdxl_files.refiner_file, sdxl_files.refiner, sdxl_files.root / "refiner-ov")
    assert not (out / "text_encoder").exists() and (out / "text_encoder_2").is_dir()
    components = dict(pipeline("sdxl-refiner", sdxl_files.refiner).components)
    config = {"requires_aesthetics_score": True, "force_zeros_for_empty_prompt": False}
    theirs = diffusers_pixels(components, "euler", xl=True, pipeline_config=config, init_image=init_image_file,
                              strength=0.6)
    ours = sdcli_pixels(out, tmp_path / "out.png", scheduler="euler", init_image=init_image_file, strength=0.6)
    compare(ours, theirs, parity_log, model="sdxl refiner 1-file", scheduler="euler", mode="img2img 0.6",
            size="96x64")


def test_sd_single_file_converts_to_diffusers_pixels(tiny_eps, tmp_path, parity_log):
    """SD 1.x: CLIP under cond_stage_model.transformer., the same UNet and VAE names."""
    single = write_sd_single_file(tiny_eps.diffusers_dir, tmp_path / "sd.safetensors")
    assert single_file_kind(single) == "sd"
    assert_same_weights(pipeline("sd", tiny_eps.diffusers_dir, single), tiny_eps.pipe())
    out = convert_single_file(single, tiny_eps.diffusers_dir, tmp_path / "sd-ov")
    theirs = diffusers_pixels(dict(tiny_eps.pipe().components), "euler", width=64, height=64)
    ours = sdcli_pixels(out, tmp_path / "out.png", scheduler="euler", width=64, height=64)
    compare(ours, theirs, parity_log, model="sd 1-file", scheduler="euler", mode="txt2img", size="64x64")


def test_weights_diffusers_leaves_unloaded_are_a_clear_error(tmp_path):
    """With TINY_SDXL's two text encoders of the same width, diffusers' loader takes ViT-L's
    tensors for text_encoder_2 and leaves the rest of it on the meta device: refused in one
    line, before anything is written."""
    from sdcli.convert.random_model import TINY_SDXL, build_random_sdxl

    folder = tmp_path / "same-width"
    build_random_sdxl(folder, TINY_SDXL, seed=0)
    single = write_sdxl_single_file(folder, tmp_path / "same-width.safetensors")
    with pytest.raises(UsageError, match="same-width.safetensors.*text_encoder_2"):
        convert(str(single), tmp_path / "out", ConvertOptions(config=str(folder), weight_format="fp32"),
                log=lambda s: None)
    assert not (tmp_path / "out").exists()
