"""A model folder's own generation defaults (`sdcli convert --default-steps N --default-guidance
G --default-vae full|tiny --scheduler NAME --timestep-spacing S`, or `--into FOLDER`): generate,
batch, serve and info use them, flags given win, a broken defaults file is one line and exit 2.

The tiny epsilon model is converted once here as a "Turbo-like" folder: Euler a with trailing
spacing, 3 steps at guidance 3.5 (values unlike every built-in default, so that a default that
is not the folder's shows).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sdcli.cli.app import app
from sdcli.engine.parameters import settings_from_image
from tests.reference import compare, diffusers_pixels, sdcli_pixels

STEPS, GUIDANCE = 3, 3.5
SIZE = dict(width=64, height=64)


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(result, code: int = 2) -> str:
    assert result.exit_code == code, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("sdcli: error: "), result.stderr
    return lines[0]


def generate(model, out: Path, *extra) -> dict:
    """`sdcli generate` with no steps/guidance/scheduler flags unless `extra` gives them: the
    --json line, with the PNG's stored settings under "png"."""
    result = run("generate", "--model", model, "--prompt", "a lighthouse", "--seed", "5", "--width", "64",
                 "--height", "64", "--rng", "torch", "--precision", "f32", "--json", "--output", out, *extra)
    assert result.exit_code == 0, result.output
    line = json.loads(result.stdout.strip().splitlines()[-1])
    line["png"] = settings_from_image(out)
    return line


@pytest.fixture(scope="module")
def turbo_like(tiny_eps, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("defaults") / "turbo-like"
    result = run("convert", tiny_eps.diffusers_dir, "--output", out, "--weight-format", "fp32", "--quiet",
                 "--default-steps", STEPS, "--default-guidance", GUIDANCE, "--scheduler", "euler_a",
                 "--timestep-spacing", "trailing")
    assert result.exit_code == 0, result.output
    return out


def test_convert_writes_the_defaults_and_leaves_model_index_as_it_was(turbo_like, tiny_eps):
    meta = json.loads((turbo_like / "sdcli.json").read_text())
    assert meta["defaults"] == {"steps": STEPS, "guidance_scale": GUIDANCE}
    config = json.loads((turbo_like / "scheduler" / "scheduler_config.json").read_text())
    assert (config["_class_name"], config["timestep_spacing"]) == ("EulerAncestralDiscreteScheduler", "trailing")
    assert (turbo_like / "model_index.json").read_bytes() == (tiny_eps.ov_dir / "model_index.json").read_bytes()


def test_generate_without_flags_uses_the_folders_defaults(turbo_like, tmp_path):
    made = generate(turbo_like, tmp_path / "a.png")
    assert made["steps"] == STEPS and made["scheduler"] == "euler_a"
    png = made["png"]
    assert (png["steps"], png["guidance_scale"], png["scheduler"]) == (STEPS, GUIDANCE, "euler_a")


def test_flags_win_over_the_folders_defaults(turbo_like, tmp_path):
    png = generate(turbo_like, tmp_path / "a.png", "--steps", "2", "--guidance-scale", "5")["png"]
    assert (png["steps"], png["guidance_scale"]) == (2, 5.0)
    png = generate(turbo_like, tmp_path / "b.png", "--steps", "2")["png"]  # the other default stays the folder's
    assert (png["steps"], png["guidance_scale"]) == (2, GUIDANCE)
    png = generate(turbo_like, tmp_path / "c.png", "--scheduler", "ddim")["png"]  # another scheduler: same defaults
    assert (png["steps"], png["guidance_scale"], png["scheduler"]) == (STEPS, GUIDANCE, "ddim")


def test_the_defaults_make_the_image_the_explicit_flags_make(turbo_like, tiny_eps, tmp_path, parity_log):
    """Same pixels as the flags spelled out, and as diffusers with Euler a, trailing spacing,
    3 steps at guidance 3.5 (what an SDXL-Turbo-style folder asks for)."""
    import diffusers

    from sdcli.imaging.image_io import read_rgb

    generate(turbo_like, tmp_path / "defaults.png")
    generate(turbo_like, tmp_path / "flags.png", "--steps", STEPS, "--guidance-scale", GUIDANCE,
             "--scheduler", "euler_a")
    assert (read_rgb(tmp_path / "defaults.png") == read_rgb(tmp_path / "flags.png")).all()

    components = dict(tiny_eps.pipe().components)
    components["scheduler"] = diffusers.EulerAncestralDiscreteScheduler.from_config(
        components["scheduler"].config, timestep_spacing="trailing")
    theirs = diffusers_pixels(components, None, steps=STEPS, guidance=GUIDANCE, **SIZE)
    ours = sdcli_pixels(turbo_like, tmp_path / "ours.png", steps=None, **SIZE)
    compare(ours, theirs, parity_log, model="eps defaults", scheduler="euler_a", mode="trailing 3", size="64x64")


def test_into_sets_the_defaults_on_a_converted_folder(tiny_eps, tmp_path):
    """An existing folder (here without sdcli.json, as optimum-cli writes them) gets defaults
    and a scheduler without converting again; a later --into keeps what it does not set."""
    folder = tmp_path / "optimum-like"
    shutil.copytree(tiny_eps.ov_dir, folder)
    (folder / "sdcli.json").unlink()
    index = (folder / "model_index.json").read_bytes()
    result = run("convert", "--into", folder, "--default-steps", "2", "--scheduler", "euler",
                 "--timestep-spacing", "trailing", "--quiet")
    assert result.exit_code == 0, result.output
    assert json.loads((folder / "sdcli.json").read_text()) == {"defaults": {"steps": 2}}
    config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert (config["_class_name"], config["timestep_spacing"]) == ("EulerDiscreteScheduler", "trailing")
    assert (folder / "model_index.json").read_bytes() == index
    result = run("convert", "--into", folder, "--default-guidance", "2.5", "--quiet")
    assert result.exit_code == 0, result.output
    assert json.loads((folder / "sdcli.json").read_text()) == {"defaults": {"steps": 2, "guidance_scale": 2.5}}
    png = generate(folder, tmp_path / "a.png")["png"]
    assert (png["steps"], png["guidance_scale"], png["scheduler"]) == (2, 2.5, "euler")
    assert not [p for p in folder.rglob("*.part")]


def test_the_folders_defaults_win_over_the_lcm_ones(tiny_eps, tmp_path):
    """The lcm scheduler on an ordinary UNet (an LCM-LoRA folder) defaults to 4 steps at
    guidance 1; the folder's steps replace the 4, its guidance-less defaults keep the 1."""
    folder = tmp_path / "lcm-lora-like"
    shutil.copytree(tiny_eps.ov_dir, folder)
    assert run("convert", "--into", folder, "--scheduler", "lcm", "--quiet").exit_code == 0
    png = generate(folder, tmp_path / "a.png")["png"]
    assert (png["steps"], png["guidance_scale"]) == (4, 1.0)
    assert run("convert", "--into", folder, "--default-steps", "2", "--quiet").exit_code == 0
    png = generate(folder, tmp_path / "b.png")["png"]
    assert (png["steps"], png["guidance_scale"], png["scheduler"]) == (2, 1.0, "lcm")


def test_batch_uses_the_folders_defaults(turbo_like, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a cat"}\n{"prompt": "a dog", "steps": 2}\n')
    out = tmp_path / "out"
    result = run("batch", prompts, "--output-dir", out, "--model", turbo_like, "--width", "64", "--height", "64",
                 "--seed", "1", "--quiet", "--parallel", "1")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [(r["steps"], r["guidance_scale"]) for r in rows] == [(STEPS, GUIDANCE), (2, GUIDANCE)]


def test_info_shows_the_defaults(turbo_like):
    result = run("info", turbo_like)
    assert result.exit_code == 0, result.output
    assert "defaults: 3 steps, guidance 3.5; scheduler EulerAncestralDiscreteScheduler, trailing spacing" in result.stdout
    model = json.loads(run("info", turbo_like, "--json").stdout)["model"]
    assert model["defaults"] == {"steps": STEPS, "guidance_scale": GUIDANCE}
    assert model["scheduler"] == {"class": "EulerAncestralDiscreteScheduler", "timestep_spacing": "trailing"}


BAD_DEFAULTS = [
    ("steps-a-string", {"defaults": {"steps": "3"}}, "steps must be an integer from 1 to 1000"),
    ("steps-0", {"defaults": {"steps": 0}}, "steps must be an integer from 1 to 1000"),
    ("steps-a-float", {"defaults": {"steps": 2.5}}, "steps must be an integer"),
    ("steps-true", {"defaults": {"steps": True}}, "steps must be an integer"),
    ("guidance-negative", {"defaults": {"guidance_scale": -1}}, "guidance_scale must be a number at least 0"),
    ("guidance-huge", {"defaults": {"guidance_scale": 1e9}}, "at most 100"),
    ("guidance-text", {"defaults": {"guidance_scale": "high"}}, "guidance_scale must be a number"),
    ("unknown-key", {"defaults": {"step": 3}}, "unknown key 'step'"),
    ("not-an-object", {"defaults": [3, 1.0]}, '"defaults" must be an object'),
    ("vae-unknown", {"defaults": {"vae": "medium"}}, "vae must be one of full, tiny"),
    ("vae-a-number", {"defaults": {"vae": 1}}, "vae must be one of full, tiny"),
]


@pytest.mark.parametrize("content,needle", [c[1:] for c in BAD_DEFAULTS], ids=[c[0] for c in BAD_DEFAULTS])
def test_a_bad_defaults_file_is_one_line_and_exit_2(tiny_eps, tmp_path, content, needle):
    folder = tmp_path / "bad"
    shutil.copytree(tiny_eps.ov_dir, folder)
    (folder / "sdcli.json").write_text(json.dumps(content))
    line = one_line_error(run("generate", "--model", folder, "--prompt", "x", "--output", tmp_path / "x.png"))
    assert "sdcli.json" in line and needle in line, line
    assert not (tmp_path / "x.png").exists()
    assert needle in one_line_error(run("info", folder))
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\n")
    assert needle in one_line_error(run("batch", prompts, "--output-dir", tmp_path / "out", "--model", folder))


def test_a_sdcli_json_that_is_not_json_is_one_line(tiny_eps, tmp_path):
    folder = tmp_path / "bad"
    shutil.copytree(tiny_eps.ov_dir, folder)
    (folder / "sdcli.json").write_text("{oops")
    line = one_line_error(run("generate", "--model", folder, "--prompt", "x", "--output", tmp_path / "x.png"))
    assert "sdcli.json is not valid JSON" in line


def test_bad_convert_flags_are_one_line_and_write_nothing(tiny_eps, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_eps.ov_dir, folder)
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    line = one_line_error(run("convert", "--into", folder, "--timestep-spacing", "sideways"))
    assert "--timestep-spacing must be one of" in line
    assert "--into needs --tiny-vae" in one_line_error(run("convert", "--into", folder))
    assert "unknown scheduler" in one_line_error(run("convert", "--into", folder, "--default-steps", "2",
                                                     "--scheduler", "nope"))
    assert "sdcli.json defaults: unknown key" in one_line_error(_with_bad_key(folder))
    for flag, value in (("--default-steps", "0"), ("--default-guidance", "-1"), ("--default-guidance", "nan")):
        result = run("convert", "--into", folder, flag, value)
        assert result.exit_code == 2 and flag in result.output, result.output
    (folder / "sdcli.json").write_bytes(before[folder / "sdcli.json"])
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    line = one_line_error(run("convert", tiny_eps.diffusers_dir, "--output", tmp_path / "new", "--timestep-spacing", "x"))
    assert "--timestep-spacing" in line and not (tmp_path / "new").exists()


def _with_bad_key(folder: Path):
    """--into over an sdcli.json whose defaults hold a misspelt key: refused, the file kept."""
    (folder / "sdcli.json").write_text(json.dumps({"defaults": {"stpes": 3}}))
    result = run("convert", "--into", folder, "--default-steps", "2")
    assert json.loads((folder / "sdcli.json").read_text()) == {"defaults": {"stpes": 3}}
    return result


def test_an_sdxl_turbo_style_folder_needs_no_flags(tiny_sdxl, tmp_path, parity_log, monkeypatch):
    """The issue's case: an SDXL folder converted with SDXL-Turbo's recipe (1 step, guidance 0,
    Euler a with trailing spacing) as its defaults makes diffusers' Turbo picture with no flags
    (the tiny SDXL's diffusers folder, converted again here with those defaults; its networks'
    IR, which the defaults do not change, copied from tiny_sdxl's fp32 conversion of the same
    folder instead of exported again: the tokenizers, scheduler and defaults are written by
    this conversion)."""
    import diffusers

    import sdcli.convert.export as export

    def copier(*names):
        def copy(_model, *args):
            out = next(a for a in args if isinstance(a, Path))
            words = [a for a in args if isinstance(a, str)]  # the weight format, a text encoder's name
            assert "fp32" in words, args
            for name in names or [w for w in words if w.startswith("text_encoder")]:
                shutil.copytree(tiny_sdxl.ov_dir / name, out / name)
        return copy

    monkeypatch.setattr(export, "export_unet", copier("unet"))
    monkeypatch.setattr(export, "export_text_encoder", copier())
    monkeypatch.setattr(export, "export_vae", copier("vae_encoder", "vae_decoder"))
    folder = tmp_path / "turbo"
    result = run("convert", tiny_sdxl.diffusers_dir, "--output", folder, "--weight-format", "fp32",
                 "--quiet", "--default-steps", "1", "--default-guidance", "0", "--scheduler", "euler_a",
                 "--timestep-spacing", "trailing")
    assert result.exit_code == 0, result.output
    png = generate(folder, tmp_path / "a.png")["png"]
    assert (png["steps"], png["guidance_scale"], png["scheduler"]) == (1, 0.0, "euler_a")
    components = dict(tiny_sdxl.components())
    components["scheduler"] = diffusers.EulerAncestralDiscreteScheduler.from_config(
        components["scheduler"].config, timestep_spacing="trailing")
    theirs = diffusers_pixels(components, None, xl=True, steps=1, guidance=0.0, **SIZE)
    ours = sdcli_pixels(folder, tmp_path / "ours.png", steps=None, **SIZE)
    compare(ours, theirs, parity_log, model="sdxl defaults", scheduler="euler_a", mode="trailing 1", size="64x64")


# --- --default-vae -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def taesd_dir(tmp_path_factory) -> Path:
    from sdcli.convert.random_model import build_random_taesd

    folder = tmp_path_factory.mktemp("defaults-taesd") / "taesd"
    build_random_taesd(folder, seed=3)
    return folder


@pytest.fixture(scope="module")
def turbo_tiny(tiny_eps, taesd_dir, tmp_path_factory) -> Path:
    """A Turbo-like folder converted with a tiny VAE that it decodes with by default."""
    out = tmp_path_factory.mktemp("defaults-vae") / "turbo-tiny"
    result = run("convert", tiny_eps.diffusers_dir, "--output", out, "--weight-format", "fp32", "--quiet",
                 "--tiny-vae", taesd_dir, "--default-vae", "tiny", "--default-steps", 2, "--default-guidance", 0,
                 "--scheduler", "euler", "--timestep-spacing", "trailing")
    assert result.exit_code == 0, result.output
    return out


def test_default_vae_tiny_decodes_with_the_tiny_vae(turbo_tiny, tmp_path):
    """No flags: the tiny VAE, the same PNG (pixels and parameters) as `--vae tiny` spelt out, and
    --from-image redoes it byte for byte; `--vae full` wins, and its PNG redoes with the full VAE."""
    from sdcli.imaging.image_io import read_rgb

    assert json.loads((turbo_tiny / "sdcli.json").read_text())["defaults"] == \
        {"steps": 2, "guidance_scale": 0.0, "vae": "tiny"}
    made = generate(turbo_tiny, tmp_path / "default.png")
    assert made["png"]["vae"] == "tiny" and made["png"]["steps"] == 2
    generate(turbo_tiny, tmp_path / "tiny.png", "--vae", "tiny")
    assert (tmp_path / "default.png").read_bytes() == (tmp_path / "tiny.png").read_bytes()
    full = generate(turbo_tiny, tmp_path / "full.png", "--vae", "full")
    assert "vae" not in full["png"]
    assert (read_rgb(tmp_path / "full.png") != read_rgb(tmp_path / "default.png")).any()
    for image in ("default", "full"):
        result = run("generate", "--model", turbo_tiny, "--from-image", tmp_path / f"{image}.png",
                     "--output", tmp_path / f"{image}-again.png", "--quiet")
        assert result.exit_code == 0, result.output
        assert (tmp_path / f"{image}-again.png").read_bytes() == (tmp_path / f"{image}.png").read_bytes(), image


def test_into_sets_the_default_vae_with_or_after_the_tiny_vae(tiny_eps, taesd_dir, tmp_path):
    """--into: tiny with the same command's --tiny-vae, or on a folder that has one; full sets it back."""
    folder = tmp_path / "optimum-like"
    shutil.copytree(tiny_eps.ov_dir, folder)
    (folder / "sdcli.json").unlink()
    result = run("convert", "--into", folder, "--tiny-vae", taesd_dir, "--default-vae", "tiny", "--quiet")
    assert result.exit_code == 0, result.output
    assert json.loads((folder / "sdcli.json").read_text())["defaults"] == {"vae": "tiny"}
    png = generate(folder, tmp_path / "a.png")["png"]
    assert (png["vae"], png["steps"], png["guidance_scale"]) == ("tiny", 20, 7.5)  # only the VAE is the folder's
    assert run("convert", "--into", folder, "--default-vae", "full", "--default-steps", 3, "--quiet").exit_code == 0
    assert json.loads((folder / "sdcli.json").read_text())["defaults"] == {"vae": "full", "steps": 3}
    png = generate(folder, tmp_path / "b.png")["png"]
    assert "vae" not in png and png["steps"] == 3
    assert run("convert", "--into", folder, "--default-vae", "tiny", "--quiet").exit_code == 0  # it has one now
    assert generate(folder, tmp_path / "c.png")["png"]["vae"] == "tiny"


def test_bad_default_vae_is_one_line_and_writes_nothing(tiny_eps, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_eps.ov_dir, folder)
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    line = one_line_error(run("convert", "--into", folder, "--default-vae", "medium"))
    assert "--default-vae must be one of full, tiny, got 'medium'" in line
    line = one_line_error(run("convert", "--into", folder, "--default-vae", "tiny", "--default-steps", "2"))
    assert "--default-vae tiny" in line and "no tiny VAE" in line
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    for extra in (["--default-vae", "tiny"], ["--default-vae", "Tiny", "--tiny-vae", "x"]):
        line = one_line_error(run("convert", tiny_eps.diffusers_dir, "--output", tmp_path / "new", *extra))
        assert "--default-vae" in line and not (tmp_path / "new").exists(), line


def test_a_default_tiny_vae_the_folder_lacks_is_one_line(tiny_eps, tmp_path):
    """sdcli.json says tiny but vae_decoder_tiny/ is gone: generate and batch say so in one line,
    and --vae full still runs."""
    folder = tmp_path / "no-tiny"
    shutil.copytree(tiny_eps.ov_dir, folder)
    (folder / "sdcli.json").write_text(json.dumps({"defaults": {"vae": "tiny"}}))
    line = one_line_error(run("generate", "--model", folder, "--prompt", "x", "--output", tmp_path / "x.png"))
    assert "vae is tiny, but the folder has no tiny VAE" in line and "--vae full" in line
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\n")
    line = one_line_error(run("batch", prompts, "--output-dir", tmp_path / "out", "--model", folder))
    assert "no tiny VAE" in line
    assert "vae" not in generate(folder, tmp_path / "y.png", "--steps", "2", "--vae", "full")["png"]


def test_batch_rows_use_the_default_vae(turbo_tiny, tmp_path):
    """Rows (none can name a VAE) decode with the folder's; --vae full for the batch wins."""
    from sdcli.imaging.image_io import read_rgb

    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a lighthouse", "seed": 5}\n{"prompt": "a dog", "steps": 1}\n')
    outputs = {}
    for label, extra in (("default", []), ("full", ["--vae", "full"])):
        out = outputs[label] = tmp_path / label
        result = run("batch", prompts, "--output-dir", out, "--model", turbo_tiny, "--width", "64", "--height", "64",
                     "--seed", "1", "--rng", "torch", "--precision", "f32", "--quiet", "--parallel", "1", *extra)
        assert result.exit_code == 0, result.output
    pngs = {label: sorted(out.glob("*.png")) for label, out in outputs.items()}
    assert [settings_from_image(p).get("vae") for p in pngs["default"]] == ["tiny", "tiny"]
    assert [settings_from_image(p).get("vae") for p in pngs["full"]] == [None, None]
    generate(turbo_tiny, tmp_path / "tiny.png", "--vae", "tiny")  # row 1 is this image's settings
    assert (read_rgb(pngs["default"][0]) == read_rgb(tmp_path / "tiny.png")).all()


def test_serve_uses_the_default_vae_where_the_request_names_none(turbo_tiny, tmp_path):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    import base64

    from fastapi.testclient import TestClient

    from sdcli.serve.app import create_app
    from sdcli.serve.worker import ModelRegistry, Worker

    worker = Worker(ModelRegistry(turbo_tiny.parent, turbo_tiny), turbo_tiny.name, queue_size=4)
    worker.start(warm_up=False)
    try:
        client = TestClient(create_app(worker))
        body = {"prompt": "a lighthouse", "seed": 5, **SIZE}

        def infotext(**extra) -> str:
            r = client.post("/sdapi/v1/txt2img", json={**body, **extra})
            assert r.status_code == 200, r.text
            (tmp_path / "served.png").write_bytes(base64.b64decode(r.json()["images"][0]))
            return json.loads(r.json()["info"])["infotexts"][0]

        text = infotext()
        assert "VAE Decoder: TAESD" in text and "Steps: 2," in text
        result = run("generate", "--model", turbo_tiny, "--prompt", "a lighthouse", "--seed", "5", "--width", "64",
                     "--height", "64", "--quiet", "--output", tmp_path / "cli.png")  # no flags: generate's PNG
        assert result.exit_code == 0, result.output
        assert (tmp_path / "cli.png").read_bytes() == (tmp_path / "served.png").read_bytes()
        assert "VAE Decoder" not in infotext(override_settings={"sd_vae_decode_method": "Full"})
        assert client.get("/sdapi/v1/options").json()["sd_vae_decode_method"] == "TAESD"  # the model's own
        assert client.post("/sdapi/v1/options", json={"sd_vae_decode_method": "Full"}).status_code == 200
        assert client.get("/sdapi/v1/options").json()["sd_vae_decode_method"] == "Full"
        assert "VAE Decoder" not in infotext()  # chosen for the server: it stays
        assert "VAE Decoder: TAESD" in infotext(override_settings={"sd_vae_decode_method": "TAESD"})
    finally:
        worker.stop()
        worker.join(30)


def test_info_shows_the_default_vae(turbo_tiny):
    result = run("info", turbo_tiny)
    assert result.exit_code == 0, result.output
    assert "defaults: 2 steps, guidance 0, tiny VAE; scheduler EulerDiscreteScheduler, trailing spacing" in result.stdout
    assert json.loads(run("info", turbo_tiny, "--json").stdout)["model"]["defaults"] == \
        {"steps": 2, "guidance_scale": 0.0, "vae": "tiny"}


def test_the_bench_sets_the_default_vae_where_a_turbo_folder_gets_a_tiny_vae(tmp_path, monkeypatch):
    """bench --arch sd-turbo --tiny-vae converts with --default-vae tiny (and adds it with the tiny
    VAE to a folder converted before without one); sd15's folder gets none; sdcli's runs name
    their VAE either way, so a folder's default changes no benchmark.  (The commands are
    recorded, not run: the flags themselves are tested on real folders above.)"""
    from sdcli.bench import peers

    calls = []
    monkeypatch.setattr(peers, "_build_once", lambda path, cmd: path)
    monkeypatch.setattr(peers.subprocess, "run", lambda cmd, **kw: calls.append([str(c) for c in cmd]))

    def default_vae(cmd):
        return cmd[cmd.index("--default-vae") + 1] if "--default-vae" in cmd else None

    for arch, wanted in (("sd-turbo", "tiny"), ("tiny-sd-turbo", "tiny"), ("sd15", None)):
        calls.clear()
        src, ov_dir = peers.ensure_models(tmp_path / arch, "fp16", lambda s: None, arch, tiny_vae=True)
        (convert,) = calls
        assert "--tiny-vae" in convert and "--output" in convert and default_vae(convert) == wanted, convert
        ov_dir.mkdir()
        (ov_dir / "model_index.json").write_text("{}")  # converted before, without the tiny VAE
        calls.clear()
        peers.ensure_models(tmp_path / arch, "fp16", lambda s: None, arch, tiny_vae=True)
        (into,) = calls
        assert "--into" in into and "--tiny-vae" in into and default_vae(into) == wanted, into
        calls.clear()
        peers.ensure_models(tmp_path / arch, "fp16", lambda s: None, arch, tiny_vae=False)
        assert calls == []
    for tiny, vae in ((True, "tiny"), (False, "full")):
        cmd, _ = peers.peer_command("sdcli", src, ov_dir, 1, 64, "f32", tmp_path / "x.png", [], tmp_path / "cache",
                                    tiny_vae=tiny)
        assert cmd[cmd.index("--vae") + 1] == vae
