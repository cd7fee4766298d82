"""`sdcli convert --weight-format int4` (issue 21) on the tiny random Z-Image: NNCF int4 weights
for the transformer and the Qwen3 text encoder (the VAE int8), converted once for the module
through the CLI with --group-size and --ratio; the folder generates, takes a LoRA, and the
usage mistakes are one line, exit 2, nothing written.

With random tiny weights int4 moves the picture a lot, so no pixel tolerance against the fp32
folder is claimed: the int4 picture must be nearer the fp32 folder's (same seed) than the fp32
folder's picture at another seed is (what the weights keep of the model outweighs what int4
loses), and the figures go to the parity log.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests.reference import sdcli_pixels
from tests.test_transformer_lora import linear_layers, peft, random_lora, save

PROMPT = "a photo of an astronaut riding a horse"
WIDTH, HEIGHT, STEPS, SEED = 64, 48, 2, 1234
TOLERANCE = 2
GROUP_SIZE, RATIO = 32, 0.8
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")


def invoke(*args):
    from typer.testing import CliRunner

    from sdcli.cli.app import app

    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def int4_folder(tiny_z_image, tmp_path_factory):
    out = tmp_path_factory.mktemp("int4") / "z-image-int4"
    result = invoke("convert", tiny_z_image[0], "--output", out, "--weight-format", "int4",
                    "--group-size", GROUP_SIZE, "--ratio", RATIO, "--quiet")
    assert result.exit_code == 0, result.output
    return out


def weight_elements(xml_path) -> dict[str, int]:
    """Elements of the IR's constants by element type (u4, u8, f16...), NNCF's scales and zero points left out."""
    import openvino as ov

    counts: dict[str, int] = {}
    for op in ov.Core().read_model(xml_path).get_ops():
        if op.get_type_name() == "Constant" and not op.get_friendly_name().endswith(("/scale", "/zero_point")):
            kind = op.get_element_type().get_type_name()
            counts[kind] = counts.get(kind, 0) + int(np.prod(op.get_output_shape(0)))
    return counts


def test_int4_folder_has_int4_weights_and_records_them(int4_folder, tiny_z_image, tmp_path):
    import openvino as ov

    from sdcli.convert.ir import compress_saved_ir, save_ir

    fp32 = tiny_z_image[1]
    meta = json.loads((int4_folder / "sdcli.json").read_text())
    assert meta["weight_format"] == "int4"
    assert meta["int4"] == {"mode": "int4_asym", "group_size": GROUP_SIZE, "ratio": RATIO, "backup": "int8_asym"}
    for component in ("transformer", "text_encoder"):
        assert weight_elements(int4_folder / component / "openvino_model.xml").get("u4", 0) > 0, component
    vae = weight_elements(int4_folder / "vae_decoder" / "openvino_model.xml")
    assert vae.get("u8", 0) > 0 and "u4" not in vae  # the VAE in int8
    # the same transformer in int8, as `--weight-format int8` writes it (from the fp32 IR, not traced again)
    save_ir(ov.Core().read_model(fp32 / "transformer" / "openvino_model.xml"), tmp_path / "int8", "fp16")
    compress_saved_ir(tmp_path / "int8")
    sizes = {name: (folder / "openvino_model.bin").stat().st_size for name, folder in
             (("fp32", fp32 / "transformer"), ("int8", tmp_path / "int8"), ("int4", int4_folder / "transformer"))}
    int4 = weight_elements(int4_folder / "transformer" / "openvino_model.xml")
    int8 = weight_elements(tmp_path / "int8" / "openvino_model.xml")
    saved = (sizes["int8"] - sizes["int4"]) / int4["u4"]
    print(f"transformer .bin bytes: {sizes}; fp32/int4 {sizes['fp32'] / sizes['int4']:.2f}, int8/int4 "
          f"{sizes['int8'] / sizes['int4']:.2f}; weights u4 {int4['u4']}, u8 {int4['u8']} (int8 folder: u8 "
          f"{int8['u8']}); bytes saved per u4 weight {saved:.3f}")
    # the layers int8 compresses, each now int4 or int8 (NNCF keeps the first and last ones and the
    # most sensitive 1 - ratio in int8)
    assert int4["u4"] + int4["u8"] == int8["u8"] and int4["u4"] > 0
    # a u4 weight takes half a byte less than a u8 one, less its group's fp16 scale and u4 zero
    # point (2.5 bytes a 32 weights), plus the per-row scale and zero point int8 had: ~0.42-0.5
    assert 0.38 < saved < 0.52
    assert sizes["fp32"] / sizes["int4"] > 4


def test_int4_folder_generates_near_the_fp32_folder_and_takes_a_lora(int4_folder, tiny_z_image, tmp_path,
                                                                      parity_log):
    fp32, pipe = tiny_z_image[1], tiny_z_image[2]

    def picture(folder, name, prompt=PROMPT, seed=SEED, *extra):
        return sdcli_pixels(folder, tmp_path / f"{name}.png", *extra, prompt=prompt, steps=STEPS, negative=None,
                            width=WIDTH, height=HEIGHT, seed=seed)

    int4 = picture(int4_folder, "int4")
    reference = picture(fp32, "fp32")
    other_seed = picture(fp32, "fp32-other-seed", PROMPT, SEED + 1)
    assert int4.std() > 1  # a picture, not a flat field
    quantized = np.abs(int4 - reference)
    seed_moved = np.abs(other_seed - reference)
    entry = dict(model="z-image int4", scheduler="flow_euler", size=f"{WIDTH}x{HEIGHT}")
    parity_log.append({**entry, "mode": "int4 vs fp32 folder", "max": int(quantized.max()),
                       "mean": float(quantized.mean())})
    parity_log.append({**entry, "mode": "fp32: seed+1 vs seed", "max": int(seed_moved.max()),
                       "mean": float(seed_moved.mean())})
    print(f"int4 vs fp32: max {quantized.max()} mean {quantized.mean():.2f}; "
          f"other seed vs fp32: max {seed_moved.max()} mean {seed_moved.mean():.2f}")
    assert quantized.mean() < seed_moved.mean()

    loras = tmp_path / "loras"
    save(peft(random_lora(linear_layers(pipe.transformer, lambda path: True), seed=5)), loras / "peft.safetensors")
    with_lora = picture(int4_folder, "int4-lora", f"{PROMPT} <lora:peft:0.5>", SEED, "--lora-dir", loras)
    lora_moved = np.abs(with_lora - int4)
    parity_log.append({**entry, "mode": "int4: LoRA 0.5 vs none", "max": int(lora_moved.max()),
                       "mean": float(lora_moved.mean())})
    print(f"int4 LoRA 0.5 vs none: max {lora_moved.max()} mean {lora_moved.mean():.2f}")
    assert lora_moved.max() > TOLERANCE
    # and moves it the right way: the LoRA is fused into the dequantized int4 weights (a wrong
    # unpacking of the nibbles would give another model), so the picture lands nearer the fp32
    # folder's with the same LoRA than where it started
    fp32_lora = picture(fp32, "fp32-lora", f"{PROMPT} <lora:peft:0.5>", SEED, "--lora-dir", loras)
    off = np.abs(with_lora - fp32_lora)
    parity_log.append({**entry, "mode": "int4+LoRA vs fp32+LoRA", "max": int(off.max()), "mean": float(off.mean())})
    print(f"int4+LoRA vs fp32+LoRA: max {off.max()} mean {off.mean():.2f}")
    assert off.mean() < lora_moved.mean()


@pytest.mark.parametrize("flags, message", [
    (["--group-size", "64"], "--weight-format int4"),
    (["--weight-format", "int8", "--ratio", "0.5"], "--weight-format int4"),
    (["--weight-format", "int4", "--ratio", "1.5"], "--ratio must be between 0 and 1"),
    (["--weight-format", "int4", "--group-size", "0"], "--group-size must be -1"),
    (["--weight-format", "int3"], "--weight-format must be one of"),
])
def test_int4_usage_mistakes_are_one_line_exit_2(tiny_z_image, tmp_path, flags, message):
    out = tmp_path / "out"
    result = invoke("convert", tiny_z_image[0], "--output", out, *flags)
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert not out.exists()


def test_int4_on_a_stable_diffusion_folder_is_refused(tmp_path):
    source = tmp_path / "sd"
    source.mkdir()
    (source / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    out = tmp_path / "out"
    result = invoke("convert", source, "--output", out, "--weight-format", "int4")
    assert result.exit_code == 2, result.output
    assert "int4 is for the transformer models" in result.output and len(result.output.strip().splitlines()) == 1
    assert not out.exists()


def test_int4_folder_encodes_the_prompt_after_the_transformer_compiled(int4_folder, tiny_z_image):
    """On an int4 folder the text encoder's first inference waits for the transformer's compile
    (on the 16-core Xeon the two slowed each other six-fold when overlapped:
    bench-results/xeon16/session35/diag/); the fp32 folder's denoiser is not 4-bit."""
    from sdcli.engine.engine import Engine
    from sdcli.engine.request import GenerationRequest
    from sdcli.model.folder import ModelFolder

    assert ModelFolder.open(int4_folder).denoiser_4bit and not ModelFolder.open(tiny_z_image[1]).denoiser_4bit
    engine = Engine(int4_folder, precision="f32", cache_dir=False)
    seen = []
    encode = engine.family.encode_prompt

    def recording(components, request, guidance):
        with components._lock:
            seen.append([f.done() for key, f in components._components.items() if key[0] == "transformer"])
        return encode(components, request, guidance)

    engine.family.encode_prompt = recording
    result = engine.generate(GenerationRequest(prompt=PROMPT, steps=1, seed=SEED, width=WIDTH, height=HEIGHT))
    assert seen == [[True]] and result.image is not None
    # the wait is inside the encode's time as in its load wait, so that --json's text_encoder is the encode alone
    assert 0 <= result.timings["load_wait_encode"] <= result.timings["encode_prompt"]
