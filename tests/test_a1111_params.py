"""A1111's parameters both ways: the text sdcli writes, read by A1111's rules (its
infotext_utils.py and the 1.9+ sampler/schedule-type split, restated here), and PNGs as A1111
1.9 and 1.10 write them, read back by `--from-image`."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from sdcli.engine.parameters import parameters_text, settings_from_fields
from sdcli.imaging.image_io import read_png_text, save_png
from sdcli.imaging.params import parse_parameters
from sdcli.schedulers import SCHEDULERS, create_scheduler
from sdcli.schedulers.a1111 import SAMPLER_DEFAULT_SCHEDULE, SCHEDULE_TYPES, from_a1111, schedule_type

# -- A1111's reading, restated -------------------------------------------------------------
A1111_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
A1111_SIZE = re.compile(r"^(\d+)x(\d+)$")
A1111_LABELS = {s.name: s.label for s in SCHEDULE_TYPES}


def a1111_parse(text: str) -> dict:
    """What A1111's parse_generation_parameters gives for `text` (the fields sdcli writes)."""
    res: dict = {}
    prompt, negative, done_with_prompt = "", "", False
    *lines, last = text.strip().split("\n")
    if len(A1111_PARAM.findall(last)) < 3:
        lines.append(last)
        last = ""
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done_with_prompt = True
            line = line[16:].strip()
        if done_with_prompt:
            negative += ("" if negative == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    res["Prompt"], res["Negative prompt"] = prompt, negative
    for key, value in A1111_PARAM.findall(last):
        if value[:1] == '"' and value[-1:] == '"':
            try:
                value = json.loads(value)
            except ValueError:
                pass
        size = A1111_SIZE.match(value)
        if size:
            res[f"{key}-1"], res[f"{key}-2"] = size[1], size[2]
        else:
            res[key] = value
    res.setdefault("Clip skip", "1")
    res.setdefault("RNG", "GPU")
    res.setdefault("Schedule type", "Automatic")
    res.setdefault("VAE Encoder", "Full")
    res.setdefault("VAE Decoder", "Full")
    return res


def a1111_sampling(sampler: str, schedule: str) -> tuple[str, str]:
    """(sampler, the schedule A1111 1.9+ runs it with), its get_sampler_and_scheduler plus the
    k-diffusion sampler's reading of Automatic: the sampler's default schedule, else the
    model's own evenly spaced sigmas (Uniform)."""
    for s in SCHEDULE_TYPES:
        for option in (s.label, s.name, *s.aliases):
            if sampler.endswith(" " + option):
                sampler, schedule = sampler[: -len(option) - 1], s.label
    key = next(s.name for s in SCHEDULE_TYPES if schedule in (s.name, s.label, *s.aliases))
    if key == "automatic":
        key = SAMPLER_DEFAULT_SCHEDULE.get(sampler, "uniform")
    return sampler, A1111_LABELS[key]


# -- what sdcli writes, read by A1111 -------------------------------------------------------
PROMPTS = [
    "a cat", "a cat, a dog, a bird", "ratio 16:9: wide", 'a "quoted" word', "(red:1.3) fox, [blurry]",
    "((masterpiece)), best quality", "line one\nline two", "日本の猫、桜", "émigré café naïve",
    "emoji 🐱🚀", "x" * 300, "a, b: c, \"d\"", "\\(literal\\) brackets", "tab\tinside", "Steps: 5, Seed: 3",
    "under_score-dash/slash", "100% real", "semicolon; and period.", "'single' quotes", "{curly} <lora:x:1>",
]
NEGATIVES = ["", "blurry", "low quality, jpeg artifacts", "bad: hands", "ugly\nsecond line", "(worst:1.4)"]


def fake(prompt: str, negative: str, **changes):
    request = SimpleNamespace(prompt=prompt, negative_prompt=negative, steps=20, guidance_scale=7.5, strength=0.8,
                              init_image=None, mask=None, mask_blur=4, rng="torch", emphasis=True, clip_skip=1,
                              deepcache=1, vae="full", guidance_rescale=0.0)
    request.__dict__.update(original_size=None, crop_coords=None, target_size=None, aesthetic_score=6.0,
                            negative_aesthetic_score=2.5)  # SDXL's micro-conditioning, diffusers' defaults
    result = SimpleNamespace(scheduler="euler_a", seed=42, width=512, height=768)
    for key, value in changes.items():
        setattr(result if key in ("scheduler", "seed", "width", "height") else request, key, value)
    return request, result


@pytest.mark.parametrize("index", range(33))
def test_a1111_reads_what_sdcli_writes(index):
    prompt = PROMPTS[index % len(PROMPTS)]
    negative = NEGATIVES[index % len(NEGATIVES)]
    changes = dict(steps=1 + index, guidance_scale=[7.5, 1.0, 12.25, 0.0][index % 4], seed=index * 2**40 + 7,
                   width=64 * (1 + index % 5), height=8 * (9 + index), clip_skip=1 + index % 3)
    if index % 3 == 1:
        changes.update(init_image=np.zeros((8, 8, 3), np.uint8), strength=[0.3, 0.75, 1.0][index % 3])
    if index % 6 == 1:
        changes.update(mask=np.zeros((8, 8)), mask_blur=index % 9)
    if index % 4 == 2:
        changes.update(emphasis=False)
    if index % 5 == 3:
        changes.update(vae="tiny")
    if index % 7 == 4:
        changes.update(original_size=(1024, 768), crop_coords=(8, 16), aesthetic_score=7.5)
    if index % 8 == 5:
        changes.update(guidance_rescale=[0.7, 0.05, 1.0][index % 3])
    request, result = fake(prompt, negative, **changes)
    got = a1111_parse(parameters_text(request, result, "my-model", "auto"))
    assert got["Prompt"] == prompt.strip() and got["Negative prompt"] == negative.strip()
    assert got["Steps"] == str(request.steps) and float(got["CFG scale"]) == request.guidance_scale
    assert got["Seed"] == str(result.seed)
    assert (got["Size-1"], got["Size-2"]) == (str(result.width), str(result.height))
    assert got["Clip skip"] == str(request.clip_skip)
    assert got["RNG"] == "CPU"  # torch's CPU generator, which --rng torch reproduces
    assert got.get("Emphasis", "Original") == ("Original" if request.emphasis else "None")
    assert got["VAE Decoder"] == ("TAESD" if request.vae == "tiny" else "Full")
    if request.init_image is not None:
        assert float(got["Denoising strength"]) == request.strength
        assert got["VAE Encoder"] == ("TAESD" if request.vae == "tiny" else "Full")
    else:
        assert "Denoising strength" not in got
    if request.mask is not None:
        assert got["Mask blur"] == str(request.mask_blur)
    # --guidance-rescale: the CFG-rescale extensions' field, absent at 0
    assert float(got.get("CFG Rescale phi", 0)) == request.guidance_rescale
    # and sdcli reads it back the same
    mine = settings_from_fields(*parse_parameters(parameters_text(request, result, "my-model", "auto")))
    assert mine["prompt"] == prompt and mine["negative_prompt"] == negative and not mine["notes"]
    assert (mine["steps"], mine["seed"], mine["rng"], mine.get("emphasis", True)) == (
        request.steps, result.seed, "torch", request.emphasis)
    assert mine.get("vae", "full") == request.vae and mine["scheduler"] == "euler_a"
    assert mine.get("guidance_rescale", 0.0) == request.guidance_rescale
    assert (mine.get("original_size"), mine.get("crop_coords"), mine.get("aesthetic_score", 6.0)) == (
        request.original_size, request.crop_coords, request.aesthetic_score)
    if request.crop_coords is not None:  # a value with a comma, quoted: A1111 reads it whole
        assert got["Crop coords"] == "8,16" and (got["Original size-1"], got["Original size-2"]) == ("1024", "768")


SPACINGS = {"leading": "DDIM", "linspace": "Uniform", "trailing": "SGM Uniform"}
SD15 = {"_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1}


@pytest.mark.parametrize("name", [n for n in SCHEDULERS if n != "lcm"])
@pytest.mark.parametrize("spacing", list(SPACINGS))
def test_every_scheduler_is_written_as_a1111_runs_it(name, spacing):
    """A1111 1.9+ reads Sampler + Schedule type as the same sampler with the same spacing of
    steps (Karras sigmas for the _karras schedulers, the config's timestep spacing otherwise)
    and sdcli reads it back as the same scheduler."""
    config = create_scheduler(name, {**SD15, "timestep_spacing": spacing}).config
    request, result = fake("p", "", scheduler=name)
    text = parameters_text(request, result, "m", scheduler_config=config)
    got = a1111_parse(text)
    sampler, schedule = a1111_sampling(got["Sampler"], got["Schedule type"])
    assert sampler == {"pndm": "PLMS", "ddim": "DDIM", "euler": "Euler", "euler_a": "Euler a", "lms": "LMS",
                       "heun": "Heun", "unipc": "UniPC", "dpmpp_2m": "DPM++ 2M", "dpmpp_2m_karras": "DPM++ 2M",
                       "dpmpp_sde": "DPM++ SDE", "dpmpp_sde_karras": "DPM++ SDE"}[name]
    assert schedule == ("Karras" if name.endswith("_karras") else SPACINGS[spacing])
    assert settings_from_fields(*parse_parameters(text))["scheduler"] == name


def test_leading_spacing_is_a1111s_ddim_schedule():
    """diffusers' leading timesteps (steps_offset 1) are the training steps A1111's DDIM
    schedule takes: 1, 1 + 1000 // n, ... (its ddim_scheduler), for n dividing 1000."""
    for n in (4, 10, 20, 25, 50):
        scheduler = create_scheduler("euler", {**SD15, "timestep_spacing": "leading"})
        scheduler.set_timesteps(n)
        a1111 = list(range(1, 1000, 1000 // n))[::-1]
        assert [int(round(float(t))) for t in scheduler.timesteps] == a1111
    assert schedule_type("lcm") == "SGM Uniform"


# -- PNGs as A1111 1.9 and 1.10 write them, read by sdcli -------------------------------------
A1111_TEXTS = {
    "1.10 karras": ("a cat, (masterpiece:1.2)\nNegative prompt: blurry, lowres\nSteps: 25, Sampler: DPM++ 2M, "
                    "Schedule type: Karras, CFG scale: 6.5, Seed: 1234, Size: 512x768, Model hash: 6ce0161689, "
                    "Model: v1-5-pruned-emaonly, Clip skip: 2, RNG: CPU, Version: v1.10.1",
                    dict(scheduler="dpmpp_2m_karras", steps=25, guidance_scale=6.5, seed=1234, width=512,
                         height=768, clip_skip=2, rng="torch", model_name="v1-5-pruned-emaonly"), 0),
    "1.9 automatic": ("a dog\nSteps: 20, Sampler: DPM++ SDE, Schedule type: Automatic, CFG scale: 7, Seed: 5, "
                      "Size: 512x512, Model: sd15, RNG: CPU, Version: v1.9.4",
                      dict(scheduler="dpmpp_sde_karras", rng="torch"), 0),
    "1.10 no schedule type": ("a dog\nSteps: 20, Sampler: DPM++ 2M, CFG scale: 7, Seed: 5, Size: 512x512, "
                              "RNG: CPU, Version: v1.10.0", dict(scheduler="dpmpp_2m_karras"), 0),
    "1.8 plain DPM++ 2M": ("a dog\nSteps: 20, Sampler: DPM++ 2M, CFG scale: 7, Seed: 5, Size: 512x512, RNG: CPU, "
                           "Version: v1.8.0", dict(scheduler="dpmpp_2m"), 0),
    "old combined name": ("a dog\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 5, Size: 512x512, "
                          "RNG: CPU, Version: v1.6.0", dict(scheduler="dpmpp_2m_karras"), 0),
    "uniform euler a": ("x\nSteps: 20, Sampler: Euler a, Schedule type: Uniform, CFG scale: 7, Seed: 5, "
                        "Size: 512x512, RNG: CPU, Version: v1.10.1", dict(scheduler="euler_a"), 0),
    "emphasis none": ("(not weighted)\nSteps: 20, Sampler: Euler, Schedule type: Automatic, CFG scale: 7, Seed: 5, "
                      "Size: 512x512, RNG: CPU, Emphasis: None, Version: v1.10.1", dict(emphasis=False), 0),
    "emphasis no norm": ("x\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 5, Size: 512x512, RNG: CPU, "
                         "Emphasis: No norm, Version: v1.10.1", dict(emphasis=True), 1),
    "taesd": ("x\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 5, Size: 512x512, RNG: CPU, VAE Decoder: TAESD, "
              "Version: v1.10.1", dict(vae="tiny"), 0),
    "gpu noise": ("x\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 5, Size: 512x512, Version: v1.10.1",
                  dict(rng=None), 1),
    "nv noise": ("x\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 5, Size: 512x512, RNG: NV, Version: v1.10.1",
                 dict(rng="torch"), 1),
    "karras on euler": ("x\nSteps: 20, Sampler: Euler, Schedule type: Karras, CFG scale: 7, Seed: 5, "
                        "Size: 512x512, RNG: CPU, Version: v1.10.1", dict(scheduler="euler"), 1),
    "img2img": ("x\nSteps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: 5, Size: 512x512, "
                "Denoising strength: 0.55, RNG: CPU, Version: v1.10.1", dict(strength=0.55, needs=["init_image"]), 0),
    "inpainting": ("x\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 512x512, Denoising strength: 1, "
                   "Mask blur: 8, RNG: CPU, Version: v1.9.0",
                   dict(strength=1.0, mask_blur=8, needs=["init_image", "mask"]), 0),
    "hires fix": ("x\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 512x512, Denoising strength: 0.7, "
                  "Hires upscale: 2, Hires upscaler: Latent, RNG: CPU, Version: v1.10.1",
                  dict(needs=[], hires_scale=2.0, hires_upscaler="Latent", hires_denoise=0.7), 0),
}


@pytest.mark.parametrize("case", list(A1111_TEXTS))
def test_sdcli_reads_a1111_pngs(case):
    text, expected, notes = A1111_TEXTS[case]
    got = settings_from_fields(*parse_parameters(text))
    for key, value in expected.items():
        assert got.get(key) == value, (key, got)
    assert len(got["notes"]) == notes, got["notes"]


def test_old_sdcli_values_still_read():
    text = ("x\nSteps: 3, Sampler: DPM++ 2M, CFG scale: 7.5, Seed: 5, Size: 64x64, Model: m, RNG: torch, "
            "Emphasis: off, VAE: tiny, Version: sdcli 0.1.0")
    got = settings_from_fields(*parse_parameters(text))
    assert (got["scheduler"], got["rng"], got["emphasis"], got["vae"], got["notes"]) == (
        "dpmpp_2m", "torch", False, "tiny", [])
    assert from_a1111("dpmpp_2m") == "dpmpp_2m" and from_a1111("DPM++ 2M") == "dpmpp_2m_karras"


# -- --from-image on A1111 PNGs ---------------------------------------------------------------
def run(*args):
    return subprocess.run([sys.executable, "-m", "sdcli", *map(str, args)], capture_output=True, text=True, timeout=300)


def test_from_image_of_a1111_pngs(tiny_eps, tmp_path, init_image_file):
    def png(name, fields):
        path = tmp_path / name
        save_png(path, np.zeros((8, 8, 3), np.uint8),
                 f"a fox, (red:1.2)\nNegative prompt: rain\nSteps: 2, {fields}, CFG scale: 7, Seed: 9, Size: 64x64, "
                 "Model: v1-5, Version: v1.10.1")
        return path

    out = tmp_path / "out.png"
    karras = png("karras.png", "Sampler: DPM++ 2M, Schedule type: Karras, RNG: CPU, Emphasis: None")
    r = run("generate", "--model", tiny_eps.ov_dir, "--from-image", karras, "--output", out, "--quiet")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    params = read_png_text(out)["parameters"]
    assert "Sampler: DPM++ 2M, Schedule type: Karras," in params and "RNG: CPU" in params
    assert "Emphasis: None" in params and params.startswith("a fox, (red:1.2)\nNegative prompt: rain\nSteps: 2,")

    gpu = png("gpu.png", "Sampler: Euler a")
    r = run("generate", "--model", tiny_eps.ov_dir, "--from-image", gpu, "--output", out, "--quiet")
    assert r.returncode == 0 and "GPU noise" in r.stderr and "warning" in r.stderr

    img2img = png("img2img.png", "Sampler: Euler a, Denoising strength: 0.5, Mask blur: 4, RNG: CPU")
    r = run("generate", "--model", tiny_eps.ov_dir, "--from-image", img2img, "--output", out, "--quiet")
    assert r.returncode == 2 and "--init-image" in r.stderr and "image-to-image" in r.stderr
    r = run("generate", "--model", tiny_eps.ov_dir, "--from-image", img2img, "--init-image", init_image_file,
            "--output", out, "--quiet")
    assert r.returncode == 2 and "--mask" in r.stderr and "inpainting" in r.stderr
