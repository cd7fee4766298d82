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
def files(tmp_path_factory, tiny_sdxl_refiner, tiny_eps) -> dict[str, SimpleNamespace]:
    """Per kind (sdxl, sdxl-refiner, sd): a tiny diffusers folder and its single file. The SDXL
    base's second text encoder is wider than its first, as SDXL's are
    (tests/single_file.wide_sdxl_sizes); the refiner and SD 1.x are the suite's tiny models
    (conftest's tiny_sdxl_refiner and tiny_eps: their diffusers folders, only read here)."""
    root = tmp_path_factory.mktemp("single-file")
    build_wide_tiny_sdxl(root / "sdxl", seed=2)
    folders = {"sdxl": root / "sdxl", "sdxl-refiner": tiny_sdxl_refiner.diffusers_dir, "sd": tiny_eps.diffusers_dir}
    write = {"sdxl": write_sdxl_single_file, "sdxl-refiner": write_sdxl_single_file, "sd": write_sd_single_file}
    return {kind: SimpleNamespace(root=root, folder=folders[kind],
                                  file=writer(folders[kind], root / f"{kind}.safetensors"))
            for kind, writer in write.items()}


KINDS = ["sdxl", "sdxl-refiner", "sd"]


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


@pytest.mark.parametrize("kind", KINDS)
def test_writer_gives_what_diffusers_single_file_loader_reads_back(files, kind):
    from safetensors import safe_open

    with safe_open(str(files[kind].file), framework="pt") as f:
        keys = set(f.keys())
    expected = ["model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.out.2.weight",
                "first_stage_model.decoder.up.0.block.0.conv1.weight", "first_stage_model.encoder.mid.attn_1.q.weight"]
    if kind != "sd":
        open_clip = f"conditioner.embedders.{1 if kind == 'sdxl' else 0}.model."
        expected += ["model.diffusion_model.label_emb.0.0.weight", open_clip + "positional_embedding",
                     open_clip + "transformer.resblocks.0.attn.in_proj_weight", open_clip + "text_projection"]
    clip_l = {"sdxl": "conditioner.embedders.0.transformer.", "sd": "cond_stage_model.transformer."}.get(kind)
    if clip_l:
        expected.append(clip_l + "text_model.embeddings.token_embedding.weight")
    assert sorted(k for k in expected if k not in keys) == []
    tensors = assert_same_weights(pipeline(kind, files[kind].folder, files[kind].file),
                                  pipeline(kind, files[kind].folder))
    # the file holds those tensors and nothing else (q, k and v weights and biases are 2 in OpenCLIP's layers)
    assert tensors == len(keys) + 4 * sum(k.endswith(".attn.in_proj_weight") for k in keys)


def test_single_file_kind_tells_base_refiner_and_sd_apart(files):
    assert {kind: single_file_kind(files[kind].file) for kind in KINDS} == {kind: kind for kind in KINDS}


@pytest.mark.parametrize("kind", KINDS)
def test_convert_loads_a_single_file_as_it_loads_the_folder(files, kind):
    """What `sdcli convert` reads from the file (load_components) is what it reads from the
    diffusers folder: the same weights, encoders, scheduler and added UNet inputs, and the
    configs stay once a component is freed (convert frees each one when it is written)."""
    from sdcli.convert.export import added_conditioning
    from sdcli.convert.sources import load_components

    opts = ConvertOptions(config=str(files[kind].folder))
    ours = load_components("single_file", files[kind].file, opts)
    theirs = load_components("folder", files[kind].folder, opts)
    assert assert_same_weights(ours, theirs) > 0
    assert [name for name, _ in ours.text_encoders()] == [name for name, _ in theirs.text_encoders()]
    assert [tokenizer("a red fox").input_ids for _, tokenizer in ours.text_encoders()] == \
        [tokenizer("a red fox").input_ids for _, tokenizer in theirs.text_encoders()]
    assert {k: v for k, v in ours.scheduler_config.items() if k in theirs.scheduler_config and k[0] != "_"} == \
        {k: v for k, v in theirs.scheduler_config.items() if k[0] != "_"}
    present = {k: v for k, v in theirs.index.items() if v != [None, None]}  # as write_metadata leaves it
    for key in ("unet", "vae", "text_encoder", "text_encoder_2", "force_zeros_for_empty_prompt",
                "requires_aesthetics_score"):
        assert ours.index.get(key) == present.get(key), key
    expected = added_conditioning(theirs)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        setattr(ours, name, None)  # as convert leaves them once written
    assert ours.is_sdxl == (kind != "sd")
    assert added_conditioning(ours) == expected
    assert ours.vae_config["scaling_factor"] == theirs.vae_config["scaling_factor"]


def convert_single_file(single: Path, config: Path, out: Path) -> Path:
    """`sdcli convert SINGLE --config CONFIG --output OUT --weight-format fp32 --quiet`, in this process."""
    from typer.testing import CliRunner

    from sdcli.cli.app import app

    result = CliRunner().invoke(app, ["convert", str(single), "--config", str(config), "--output", str(out),
                                      "--weight-format", "fp32", "--quiet"])
    assert result.exit_code == 0, result.output
    return out


def test_sdxl_single_file_converts_to_diffusers_pixels(files, tmp_path, parity_log):
    """End to end: the CLI's convert of the file, generate against diffusers on the folder. (The
    refiner's and SD 1.x's files gave max 1 of 255 the same way, euler: img2img 0.6 and txt2img;
    each conversion costs a minute on the shared 2-core machine, so they are checked above
    through what convert loads.)"""
    import json

    out = convert_single_file(files["sdxl"].file, files["sdxl"].folder, tmp_path / "sdxl-ov")
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline" and "text_encoder_2" in index
    components = dict(pipeline("sdxl", files["sdxl"].folder).components)  # the diffusers folder, not the file
    theirs = diffusers_pixels(components, "euler", xl=True, width=64, height=64)
    ours = sdcli_pixels(out, tmp_path / "out.png", scheduler="euler", width=64, height=64)
    compare(ours, theirs, parity_log, model="sdxl 1-file", scheduler="euler", mode="txt2img", size="64x64")


def test_weights_diffusers_leaves_unloaded_are_a_clear_error(tiny_sdxl, tmp_path):
    """With TINY_SDXL's two text encoders of the same width (conftest's tiny_sdxl), diffusers'
    loader takes ViT-L's tensors for text_encoder_2 and leaves the rest of it on the meta device:
    refused in one line, before anything is written."""
    folder = tiny_sdxl.diffusers_dir
    single = write_sdxl_single_file(folder, tmp_path / "same-width.safetensors")
    with pytest.raises(UsageError, match="same-width.safetensors.*text_encoder_2"):
        convert(str(single), tmp_path / "out", ConvertOptions(config=str(folder), weight_format="fp32"),
                log=lambda s: None)
    assert not (tmp_path / "out").exists()
