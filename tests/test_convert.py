"""`sdcli convert`: optimum-cli's layout and tensor names, weight formats, atomic output."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import openvino as ov
import pytest

from sdcli.convert.export import ConvertOptions, convert
from sdcli.util.errors import UsageError


def io_of(path):
    model = ov.Core().read_model(str(path))
    inputs = {p.get_any_name(): (p.get_element_type().get_type_name(), str(p.get_partial_shape())) for p in model.inputs}
    outputs = [sorted(p.get_names()) for p in model.outputs]
    return inputs, outputs


def test_layout_and_tensor_names_match_optimum(tiny_eps):
    root = tiny_eps.ov_dir
    for name in ["model_index.json", "scheduler/scheduler_config.json", "tokenizer/openvino_tokenizer.xml"]:
        assert (root / name).is_file(), name
    for comp in ["text_encoder", "unet", "vae_encoder", "vae_decoder"]:
        for f in ["openvino_model.xml", "openvino_model.bin", "config.json"]:
            assert (root / comp / f).is_file(), f"{comp}/{f}"

    inputs, outputs = io_of(root / "unet" / "openvino_model.xml")
    assert inputs == {
        "sample": ("f32", "[?,4,?,?]"),
        "timestep": ("i64", "[?]"),
        "encoder_hidden_states": ("f32", "[?,?,32]"),
    }
    assert outputs == [["out_sample"]]
    inputs, outputs = io_of(root / "text_encoder" / "openvino_model.xml")
    assert inputs == {"input_ids": ("i64", "[?,?]")}
    assert outputs == [["last_hidden_state"], ["pooler_output"]]
    inputs, outputs = io_of(root / "vae_encoder" / "openvino_model.xml")
    assert inputs == {"sample": ("f32", "[?,3,?,?]")}
    assert outputs == [["latent_parameters"]]
    inputs, outputs = io_of(root / "vae_decoder" / "openvino_model.xml")
    assert inputs == {"latent_sample": ("f32", "[?,4,?,?]")}
    assert outputs == [["sample"]]
    # The scaling factor stays in config, not in the graph.
    assert json.loads((root / "vae_decoder" / "config.json").read_text())["scaling_factor"] == pytest.approx(0.18215)
    index = json.loads((root / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert "safety_checker" not in index


def test_openvino_tokenizer_gives_the_same_ids(tiny_eps):
    import openvino_tokenizers  # noqa: F401  (registers the tokenizer operations)

    from sdcli.model.tokenizer import PromptTokenizer

    ours = PromptTokenizer(tiny_eps.ov_dir / "tokenizer")
    compiled = ov.Core().compile_model(str(tiny_eps.ov_dir / "tokenizer" / "openvino_tokenizer.xml"), "CPU")
    for text in ["a photo of an astronaut riding a horse", "Hello, World!"]:
        theirs = compiled([text])["input_ids"][0]
        assert [ours.bos, *ours.ids(text), ours.eos] == theirs.tolist()


def test_weight_formats_shrink_the_files(tiny_eps, tiny_eps_fp16, tmp_path):
    sizes = {"fp16": (tiny_eps_fp16 / "unet" / "openvino_model.bin").stat().st_size}  # conftest's fp16 conversion
    out = tmp_path / "int8"
    convert(str(tiny_eps.diffusers_dir), out, ConvertOptions(weight_format="int8"), log=lambda s: None)
    sizes["int8"] = (out / "unet" / "openvino_model.bin").stat().st_size
    fp32 = (tiny_eps.ov_dir / "unet" / "openvino_model.bin").stat().st_size
    assert sizes["fp16"] < 0.6 * fp32
    assert sizes["int8"] < 0.6 * fp32
    assert json.loads((tmp_path / "int8" / "sdcli.json").read_text())["weight_format"] == "int8"
    # An fp16 model still generates.
    r = subprocess.run([sys.executable, "-m", "sdcli", "generate", "--model", tiny_eps_fp16, "--prompt", "x",
                        "--steps", "2", "--seed", "1", "--width", "64", "--height", "64", "--output",
                        tmp_path / "fp16.png", "--quiet"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


def test_existing_output_needs_force(tiny_eps, tmp_path):
    out = tmp_path / "m"
    out.mkdir()
    (out / "keep").write_text("x")
    with pytest.raises(UsageError, match="--force"):
        convert(str(tiny_eps.diffusers_dir), out, ConvertOptions(weight_format="fp32"), log=lambda s: None)
    assert (out / "keep").exists()
    convert(str(tiny_eps.diffusers_dir), out, ConvertOptions(weight_format="fp32", force=True), log=lambda s: None)
    assert not (out / "keep").exists()
    assert (out / "unet" / "openvino_model.xml").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_interrupted_convert_leaves_nothing(tiny_eps, tmp_path, monkeypatch):
    import sdcli.convert.export as conv

    real_save = conv.save_ir

    def interrupt_at_unet(model, folder, fmt):
        if folder.name == "unet":
            raise KeyboardInterrupt
        real_save(model, folder, fmt)

    monkeypatch.setattr(conv, "save_ir", interrupt_at_unet)
    with pytest.raises(KeyboardInterrupt):
        convert(str(tiny_eps.diffusers_dir), tmp_path / "m", ConvertOptions(), log=lambda s: None)
    assert list(tmp_path.iterdir()) == []


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "sdcli", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


def test_pickle_checkpoints_are_refused(tmp_path):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"not really a pickle")
    r = run_cli("convert", ckpt, "--output", tmp_path / "out")
    assert r.returncode == 2
    assert "--allow-pickle" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_hub_repo_offline_is_a_clear_error(tmp_path):
    r = run_cli("convert", "someone/some-model", "--output", tmp_path / "out",
                env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert r.returncode == 2, r.stderr
    assert "someone/some-model" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_convert_cli_bad_usage(tmp_path):
    r = run_cli("convert", tmp_path / "missing-folder")
    assert r.returncode == 2 and "missing-folder" in r.stderr
    r = run_cli("convert", tmp_path, "--weight-format", "int3")
    assert r.returncode == 2 and "weight-format" in r.stderr


def test_single_file_that_is_not_a_checkpoint_is_a_clear_error(tiny_eps, tmp_path):
    """A .safetensors file with diffusers' key names is no original-format checkpoint."""
    import shutil

    src = tiny_eps.diffusers_dir / "unet" / "diffusion_pytorch_model.safetensors"
    ckpt = tmp_path / "not-a-checkpoint.safetensors"
    shutil.copy(src, ckpt)
    r = run_cli("convert", ckpt, "--output", tmp_path / "out", "--config", tiny_eps.diffusers_dir)
    assert r.returncode == 2, r.stderr
    assert "not-a-checkpoint.safetensors" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_an_int8_unet_is_compressed_from_its_saved_half_precision_ir(tmp_path):
    """convert writes an int8 UNet in fp16 first and compresses the saved IR in place once
    torch's copy is freed (the lower peak): int8 weights, nothing left of the staging, and
    outputs within int8's rounding of the original's."""
    pytest.importorskip("nncf")
    import numpy as np
    import openvino as ov
    from openvino import opset13 as ops

    from sdcli.convert.ir import compress_saved_ir

    rng = np.random.default_rng(0)
    x = ops.parameter([1, 256], np.float32, name="x")
    weight = rng.standard_normal((256, 256)).astype(np.float32)
    model = ov.Model([ops.matmul(x, ops.constant(weight), False, True)], [x])
    folder = tmp_path / "unet"
    ov.save_model(model, folder / "openvino_model.xml", compress_to_fp16=True)
    compress_saved_ir(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["openvino_model.bin", "openvino_model.xml"]
    compressed = ov.Core().read_model(folder / "openvino_model.xml")
    types = {op.get_output_element_type(0).get_type_name() for op in compressed.get_ops() if op.get_type_name() == "Constant"}
    assert types & {"i8", "u8"}, types
    sample = rng.standard_normal((1, 256)).astype(np.float32)
    got = ov.Core().compile_model(compressed, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(sample)[0]
    want = sample @ weight.T
    assert np.abs(got - want).max() < 0.02 * np.abs(want).max()


def test_modules_are_traced_once_without_torch_s_trace_check(monkeypatch):
    """to_openvino traces a module once: torch.jit.trace's check (a second trace and two more runs
    of the module) is skipped, as optimum-intel skips it for diffusers exports; the IR computes
    what the module does."""
    import numpy as np
    import torch
    import torch.jit._trace as jit_trace

    from sdcli.convert.ir import to_openvino

    def checked(*args, **kwargs):
        raise AssertionError("torch.jit.trace checked its trace")

    monkeypatch.setattr(jit_trace, "_check_trace", checked)

    class Scale(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(4, 3)

        def forward(self, sample):
            return torch.relu(self.linear(sample))

    module = Scale()
    model = to_openvino(module, {"sample": torch.rand(2, 4)}, [(ov.PartialShape([-1, 4]), ov.Type.f32)], ["out"])
    x = np.random.default_rng(0).random((5, 4), dtype=np.float32)
    got = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})({"sample": x})["out"]
    with torch.no_grad():
        assert np.allclose(got, module(torch.from_numpy(x)).numpy(), atol=1e-5)
