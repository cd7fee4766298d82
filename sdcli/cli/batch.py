"""`sdcli batch`: one image per row of a prompts file, resumably, here or on a Ray cluster."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from sdcli.cli.app import (CACHE_MAX_GB_HELP, STATE, app, finite, list_schedulers, option_given,
                           positive_multiple_of_8, scheduler_name, use_cache_max_gb, user_errors)
from sdcli.engine.request import GUIDANCE_MAX
from sdcli.util.errors import UsageError


def _parallel(value: str) -> int:
    """--parallel: 0 for auto, else a positive count."""
    if value.strip().lower() == "auto":
        return 0
    try:
        count = int(value)
    except ValueError:
        count = 0
    if not 1 <= count <= 64:
        raise UsageError(f"--parallel takes auto or a number from 1 to 64, got {value!r}")
    return count


BATCH_HELP = """Make one image per row of FILE into --output-dir; a re-run skips what is done.

FILE: .txt, one prompt a line; .jsonl or .csv rows may also set negative_prompt, seed,
steps, guidance_scale, guidance_rescale, width, height, scheduler, init_image, strength,
reference_images (a JSON list, or paths separated by |), name and the hires fix's hires_scale,
hires_width, hires_height, hires_upscaler, hires_steps, hires_denoise, hires_prompt,
hires_negative_prompt, hires_scheduler, hires_cfg, and ControlNet units' controlnet, control_image,
control_weight, control_start, control_end, control_mode, control_resize, control_preprocessor,
control_type, control_threshold_a, control_threshold_b, control_mask, control_resolution (one
value, a JSON list, or values separated by |)."""


@app.command(help=BATCH_HELP)
def batch(
    ctx: typer.Context,
    file: str = typer.Argument(..., help="Prompts: .txt (one a line), .jsonl or .csv (per-row settings); - reads standard input."),
    output_dir: Path = typer.Option(..., "--output-dir", "-o", help="Folder for the images and manifest.jsonl (created if missing)."),
    input_format: Optional[str] = typer.Option(None, "--format", help="txt, jsonl or csv [default: FILE's extension; txt for -]."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Converted model folder, or a Hub repo of one (owner/name) [default: $SDCLI_MODEL, else the only one under models/, else OpenVINO/stable-diffusion-v1-5-int8-ov from the Hub]."),
    negative_prompt: str = typer.Option("", "--negative-prompt", "-n", help="Default negative prompt."),
    init_image: Optional[Path] = typer.Option(None, "--init-image", "-i", help="Default init image (image-to-image)."),
    reference_image: Optional[List[Path]] = typer.Option(None, "--reference-image", help="FLUX.2-klein editing: default reference image (repeatable; see generate); a row's reference_images replace them."),
    strength: float = typer.Option(0.8, "--strength", min=0.0, max=1.0, callback=finite, help="Image-to-image: how much to repaint, 0..1."),
    steps: int = typer.Option(20, "--steps", "-s", min=1, max=1000, help="Denoising steps."),
    guidance_scale: float = typer.Option(7.5, "--guidance-scale", "-g", min=0.0, max=GUIDANCE_MAX, callback=finite, help="Classifier-free guidance; 1 or less turns it off."),
    guidance_rescale: float = typer.Option(0.0, "--guidance-rescale", min=0.0, max=1.0, callback=finite, metavar="PHI", help="diffusers' guidance_rescale for every row (see generate) [default: 0, off]."),
    seed: Optional[int] = typer.Option(None, "--seed", min=0, max=2**64 - 1, help="Base seed: a row without one uses seed+index [default: random, printed, kept in the folder for re-runs]."),
    width: Optional[int] = typer.Option(None, "--width", "-W", callback=positive_multiple_of_8, help="Multiple of 8 [default: the model's, or the init image's]."),
    height: Optional[int] = typer.Option(None, "--height", "-H", callback=positive_multiple_of_8, help="Multiple of 8 [default: the model's, or the init image's]."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", callback=scheduler_name, help="A name from --list-schedulers, short (dpmpp_2m_karras) or A1111's (\"DPM++ 2M Karras\") [default: the model's]."),
    list_schedulers: bool = typer.Option(False, "--list-schedulers", callback=list_schedulers, is_eager=True, expose_value=False, help="Print the schedulers and exit."),
    device: str = typer.Option("CPU", "--device", help="OpenVINO device: CPU, GPU, NPU, AUTO, ..."),
    precision: str = typer.Option("auto", "--precision", help="auto, f32, bf16, f16."),
    rng: str = typer.Option("torch", "--rng", help="torch or numpy."),
    vae: str = typer.Option("full", "--vae", help="full or tiny (the tiny VAE `convert --tiny-vae` added), for every row [default: the model folder's own (convert --default-vae), else full]."),
    deepcache: int = typer.Option(1, "--deepcache", min=1, max=1000, help="DeepCache for every row (see generate)."),
    clip_skip: int = typer.Option(1, "--clip-skip", min=1, max=24, help="Clip skip for every row (see generate)."),
    cfg_normalization: float = typer.Option(0.0, "--cfg-normalization", min=0.0, max=GUIDANCE_MAX, callback=finite, metavar="K", help="Z-Image: cfg_normalization for every row (see generate)."),
    cfg_truncation: float = typer.Option(1.0, "--cfg-truncation", min=0.0, max=1.0, callback=finite, metavar="T", help="Z-Image: cfg_truncation for every row (see generate)."),
    parallel: str = typer.Option("auto", "--parallel", metavar="N|auto", help="Rows in flight at once, one per OpenVINO throughput stream: N, or auto (OpenVINO's count on machines of 8+ cores, where it measured +16% images/hour; one at a time below, where it measured -8%); 1: one at a time."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or notes on stderr."),
    as_json: bool = typer.Option(False, "--json", help="One JSON line per finished image on stdout (as in the manifest)."),
    ray: Optional[str] = typer.Option(None, "--ray", metavar="ADDRESS", help="Spread the rows over a Ray cluster: auto (the running one), local (start one here), HOST:6379 or ray://HOST:10001. The model folder must be at the same path on every node (needs sdcli[ray])."),
    ray_cpus_per_actor: Optional[int] = typer.Option(None, "--ray-cpus-per-actor", min=1, metavar="N", help="With --ray: one worker per N CPUs [default: one per node, with all its CPUs]."),
    shared_output: bool = typer.Option(False, "--shared-output", help="With --ray: workers write the images into --output-dir themselves (a folder shared by every node, at the same path)."),
    lora_dir: Optional[Path] = typer.Option(None, "--lora-dir", help="Where a row's <lora:NAME:WEIGHT> finds NAME (see generate) [default: $SDCLI_LORA_DIR, else models/Lora]."),
    embeddings_dir: Optional[Path] = typer.Option(None, "--embeddings-dir", help="Textual-inversion embeddings (see generate) [default: $SDCLI_EMBEDDINGS_DIR, else models/embeddings]."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Also read LoRAs and embeddings saved as pickles (.pt, .ckpt, .bin): only files you trust."),
    hires_scale: Optional[float] = typer.Option(None, "--hires-scale", callback=finite, help="The hires fix for every row (see generate; docs/hires.md): a second pass at this many times the size; a row's hires_scale, hires_width or hires_height replace the size."),
    hires_width: Optional[int] = typer.Option(None, "--hires-width", callback=positive_multiple_of_8, help="Hires fix: the second pass's width (see generate)."),
    hires_height: Optional[int] = typer.Option(None, "--hires-height", callback=positive_multiple_of_8, help="Hires fix: the second pass's height (see generate)."),
    hires_upscaler: Optional[str] = typer.Option(None, "--hires-upscaler", metavar="NAME", help="Hires fix: the upscaler (see generate) [default: Latent]."),
    hires_steps: Optional[int] = typer.Option(None, "--hires-steps", min=0, max=1000, help="Hires fix: the second pass's steps (0: --steps)."),
    hires_denoise: Optional[float] = typer.Option(None, "--hires-denoise", min=0.0, max=1.0, callback=finite, help="Hires fix: the second pass's denoising strength [default: 0.7]."),
    hires_prompt: Optional[str] = typer.Option(None, "--hires-prompt", help="Hires fix: the second pass's prompt [default: the row's]."),
    hires_negative_prompt: Optional[str] = typer.Option(None, "--hires-negative-prompt", help="Hires fix: the second pass's negative prompt [default: the row's]."),
    hires_scheduler: Optional[str] = typer.Option(None, "--hires-scheduler", callback=scheduler_name, help="Hires fix: the second pass's scheduler [default: the row's]."),
    hires_cfg: Optional[float] = typer.Option(None, "--hires-cfg", min=0.0, max=GUIDANCE_MAX, callback=finite, help="Hires fix: the second pass's guidance scale [default: the row's]."),
    upscaler_dir: Optional[Path] = typer.Option(None, "--upscaler-dir", help="Hires fix: where a model upscaler's name is found (see generate) [default: $SDCLI_UPSCALER_DIR, else models/ESRGAN]."),
    controlnet: Optional[List[str]] = typer.Option(None, "--controlnet", metavar="NAME", help="A ControlNet unit for every row (see generate), with its --control-image; repeat both for several. A row's controlnet replaces them, its control_image the images."),
    control_image: Optional[List[Path]] = typer.Option(None, "--control-image", metavar="FILE", help="ControlNet: the control image of each --controlnet (see generate)."),
    control_weight: Optional[List[float]] = typer.Option(None, "--control-weight", help="ControlNet: its weight, 0..2, once for all units or once per unit [default: 1]."),
    control_start: Optional[List[float]] = typer.Option(None, "--control-start", help="ControlNet: the fraction of the steps it starts at [default: 0]."),
    control_end: Optional[List[float]] = typer.Option(None, "--control-end", help="ControlNet: the fraction of the steps it ends at [default: 1]."),
    control_mode: Optional[List[str]] = typer.Option(None, "--control-mode", metavar="balanced|prompt|controlnet", help="ControlNet: A1111's control mode (see generate) [default: balanced]."),
    control_resize: Optional[List[str]] = typer.Option(None, "--control-resize", metavar="just-resize|crop-and-resize|resize-and-fill", help="ControlNet: how the control image is fitted to the picture [default: crop-and-resize]."),
    control_preprocessor: Optional[List[str]] = typer.Option(None, "--control-preprocessor", metavar="MODULE", help="ControlNet: the preprocessor that makes the control map (see generate) [default: none]."),
    control_type: Optional[List[str]] = typer.Option(None, "--control-type", metavar="TYPE", help="ControlNet Union: the unit's control type, several joined by + with one control image each (see generate)."),
    control_threshold_a: Optional[List[float]] = typer.Option(None, "--control-threshold-a", metavar="VALUE", help="ControlNet: the preprocessor's first slider (see generate); -1: its default [default: -1]."),
    control_threshold_b: Optional[List[float]] = typer.Option(None, "--control-threshold-b", metavar="VALUE", help="ControlNet: the preprocessor's second slider (see generate); -1: its default [default: -1]."),
    control_mask: Optional[List[str]] = typer.Option(None, "--control-mask", metavar="FILE", help="ControlNet: the unit's own mask for inpaint_only and inpaint (see generate); none: that unit has none."),
    control_resolution: Optional[List[str]] = typer.Option(None, "--control-resolution", metavar="picture|pixel-perfect|PIXELS", help="ControlNet: where the preprocessor makes the map (see generate) [default: picture]."),
    controlnet_dir: Optional[Path] = typer.Option(None, "--controlnet-dir", help="Where a ControlNet NAME is found (see generate) [default: $SDCLI_CONTROLNET_DIR, else models/ControlNet]."),
    cache_max_gb: Optional[float] = typer.Option(None, "--cache-max-gb", min=0.0, callback=finite, metavar="GB", help=CACHE_MAX_GB_HELP + " With --ray, on this node and the workers that inherit its environment."),
):
    given = locals()  # the hires fix's and ControlNet's options, by name
    with user_errors("interrupted; run the same command again to finish"):
        use_cache_max_gb(cache_max_gb)
        from sdcli.batch.controlnet_rows import CONTROL_FIELDS
        from sdcli.batch.hires_rows import HIRES_FIELDS
        from sdcli.batch.run import BatchOptions, run_batch
        from sdcli.engine.networks import NetworkFolders

        NetworkFolders(lora_dir, embeddings_dir, allow_pickle).check()  # a folder named that does not exist

        runner = None
        if ray is not None:
            from sdcli.batch.ray_runner import require_ray, run_on_ray

            require_ray()  # before anything is read or written
            runner = run_on_ray
        code = run_batch(BatchOptions(
            file=file, output_dir=output_dir, input_format=input_format, model=model, negative_prompt=negative_prompt,
            init_image=init_image, reference_images=tuple(reference_image or ()), strength=strength, steps=steps,
            guidance_scale=guidance_scale, seed=seed, guidance_rescale=guidance_rescale,
            width=width, height=height, scheduler=scheduler, device=device, precision=precision, rng=rng,
            quiet=quiet, as_json=as_json, debug=STATE["debug"], parallel=_parallel(parallel),
            vae=vae, deepcache=deepcache, clip_skip=clip_skip, cfg_normalization=cfg_normalization, cfg_truncation=cfg_truncation,
            unset=tuple(name for name in ("steps", "guidance_scale", "vae") if not option_given(ctx, name)),
            ray=ray, ray_cpus_per_actor=ray_cpus_per_actor, shared_output=shared_output,
            lora_dir=lora_dir, embeddings_dir=embeddings_dir, allow_pickle=allow_pickle,
            hires={name: given[name] for name in HIRES_FIELDS if given[name] is not None}, upscaler_dir=upscaler_dir,
            control={name: list(given[name]) for name in CONTROL_FIELDS if given[name]}, controlnet_dir=controlnet_dir,
        ), runner)
    raise typer.Exit(code)
