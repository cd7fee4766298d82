"""`sdcli convert`: a diffusers model to OpenVINO IR, or a tiny VAE into a converted folder."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from sdcli.cli.app import app, check_creatable, finite, library_output, quiet_libraries, user_errors
from sdcli.engine.request import GUIDANCE_MAX, STEPS_MAX
from sdcli.util.errors import UsageError


@app.command()
def convert(
    source: Optional[str] = typer.Argument(None, help="Hub repo id, local diffusers folder, or single-file .safetensors checkpoint (none with --into)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Output folder [default: models/<source name>]."),
    weight_format: Optional[str] = typer.Option(None, "--weight-format", help="fp16 (default, half the size of fp32), fp32, int8 (NNCF weight compression; the default with --quantize), or int4 (Z-Image and FLUX.2-klein: NNCF int4 weights for the transformer and the text encoder, the VAE int8)."),
    group_size: Optional[int] = typer.Option(None, "--group-size", help="With --weight-format int4: input channels per int4 scale (-1: one scale per output channel) [default: 128, as optimum-cli]."),
    ratio: Optional[float] = typer.Option(None, "--ratio", help="With --weight-format int4: the share of the layers in int4, 0 to 1, the rest int8_asym [default: 1]."),
    sym: bool = typer.Option(False, "--sym", help="With --weight-format int4: symmetric int4 (no zero points) instead of asymmetric."),
    quantize: Optional[str] = typer.Option(None, "--quantize", help="hybrid: NNCF hybrid quantization of the UNet (int8 weights for its linear layers, int8 weights and activations elsewhere), calibrated on a short generation; the other components int8 weight-only."),
    calibration_prompts: Optional[Path] = typer.Option(None, "--calibration-prompts", help="With --quantize: a text file, one prompt a line [default: 8 built-in prompts]."),
    calibration_samples: int = typer.Option(32, "--calibration-samples", min=4, max=2000, help="With --quantize: UNet calls to measure (more: slower conversion, ranges closer to real use)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output folder."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Allow pickled .ckpt checkpoints (they can run code when loaded)."),
    config: Optional[str] = typer.Option(None, "--config", help="Diffusers folder or repo whose configs describe a single-file checkpoint; for a FLUX.2-klein or Z-Image transformer file, the folder of that family whose text encoder, VAE, tokenizer and scheduler complete it."),
    lora: Optional[str] = typer.Option(None, "--lora", help="Fuse this LoRA into the UNet (and the text encoder, where it has weights for it): a .safetensors file, a folder holding one, or a Hub repo such as latent-consistency/lcm-lora-sdv1-5 (needs peft)."),
    lora_scale: float = typer.Option(1.0, "--lora-scale", callback=finite, help="The LoRA's weight when fused."),
    convert_scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Make this the model's own scheduler (scheduler_config.json), e.g. lcm for an LCM-LoRA; a name from `sdcli generate --list-schedulers` [default: the source's]."),
    timestep_spacing: Optional[str] = typer.Option(None, "--timestep-spacing", metavar="leading|trailing|linspace", help="How the model's scheduler spreads its steps (scheduler_config.json's timestep_spacing): trailing for SDXL-Turbo, Lightning, Hyper-SD [default: the source's]."),
    default_steps: Optional[int] = typer.Option(None, "--default-steps", min=1, max=STEPS_MAX, help="The folder's own default for generate's --steps (kept in its sdcli.json), e.g. 1 for a Turbo model."),
    default_guidance: Optional[float] = typer.Option(None, "--default-guidance", min=0.0, max=GUIDANCE_MAX, callback=finite, help="The folder's own default for generate's --guidance-scale (sdcli.json), e.g. 0 for a Turbo model."),
    default_vae: Optional[str] = typer.Option(None, "--default-vae", metavar="full|tiny", help="The folder's own default for generate's --vae (sdcli.json): tiny decodes with the tiny VAE (this command's --tiny-vae, or one the folder has), e.g. for a Turbo model."),
    tiny_vae: Optional[str] = typer.Option(None, "--tiny-vae", help="Also convert this tiny autoencoder for `generate --vae tiny`: a diffusers AutoencoderTiny folder or Hub repo (madebyollin/taesd for SD 1.x/2.x, madebyollin/taesdxl for SDXL)."),
    into: Optional[Path] = typer.Option(None, "--into", help="No SOURCE: change this converted model folder (sdcli's or optimum-cli's) instead: add --tiny-vae, and/or set --default-steps, --default-guidance, --default-vae, --scheduler, --timestep-spacing."),
    controlnet_dir: Optional[Path] = typer.Option(None, "--controlnet-dir", help="Where a ControlNet (a diffusers ControlNetModel folder or repo, or A1111's single file of one) is written when --output is not given [default: $SDCLI_CONTROLNET_DIR, else models/ControlNet]."),
    upscaler_dir: Optional[Path] = typer.Option(None, "--upscaler-dir", help="Where an upscaler checkpoint (ESRGAN, Real-ESRGAN, SPAN, SwinIR, HAT, ... that spandrel recognises) is written when --output is not given [default: $SDCLI_UPSCALER_DIR, else models/ESRGAN]."),
    annotator_dir: Optional[Path] = typer.Option(None, "--annotator-dir", help="Where a ControlNet preprocessor's network (Depth Anything V2's depth_anything_v2_vit*.pth, lineart's sk_model.pth / sk_model2.pth, lineart_anime's netG.pth, softedge_hed's and scribble_hed's ControlNetHED.pth, softedge_pidinet's and scribble_pidinet's table5_pidinet.pth; OpenPose's body_pose_model.pth, hand_pose_model.pth, facenet.pth) is written when --output is not given, in a folder named as its module [default: $SDCLI_ANNOTATOR_DIR, else models/annotators]."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors."),
):
    """Export a diffusers model to OpenVINO IR (the optimum-cli folder layout); or, with
    --into DIR, add a tiny VAE to a converted model or set its generation defaults."""
    from sdcli.convert.defaults import check_spacing
    from sdcli.model.defaults import check_vae_flag
    from sdcli.convert.export import WEIGHT_FORMATS, ConvertOptions, default_output_name

    with user_errors("interrupted; nothing was written"), library_output(quiet):  # NNCF's bars: stderr or none
        weight_format = weight_format if weight_format is not None else ("int8" if quantize else "fp16")
        if weight_format not in WEIGHT_FORMATS:
            raise UsageError(f"--weight-format must be one of {', '.join(WEIGHT_FORMATS)}, got {weight_format!r}")
        int4 = None
        if group_size is not None or ratio is not None or sym:
            from sdcli.convert.ir import DEFAULT_GROUP_SIZE, DEFAULT_RATIO, Int4

            if weight_format != "int4" or into is not None:
                raise UsageError("--group-size, --ratio and --sym set int4 compression: pass --weight-format int4 "
                                 "(when converting a model)")
            int4 = Int4(group_size=DEFAULT_GROUP_SIZE if group_size is None else group_size,
                        ratio=DEFAULT_RATIO if ratio is None else ratio, sym=sym)
            int4.check()
        check_spacing(timestep_spacing)
        check_vae_flag(default_vae)
        log = (lambda s: None) if quiet else (lambda s: print(s, file=sys.stderr))
        if into is not None:
            if source is not None or output is not None:
                raise UsageError("--into changes a converted folder; give it without SOURCE and --output")
            change_folder(into, tiny_vae, weight_format, force, log,
                          dict(steps=default_steps, guidance=default_guidance, scheduler=convert_scheduler,
                               spacing=timestep_spacing, vae=default_vae))
            if not quiet:
                print(into)
            return
        if source is None:
            raise UsageError("missing SOURCE (a Hub repo id, diffusers folder or checkpoint), or --tiny-vae with --into DIR")
        if not source.strip():
            raise UsageError("SOURCE is empty: give a Hub repo id, a diffusers folder or a .safetensors checkpoint")
        if into is None and config is None and convert_openpose(source, output, annotator_dir, weight_format,
                                                                allow_pickle, force, quiet, log):
            return
        if into is None and config is None and convert_annotator(source, output, annotator_dir, weight_format,
                                                                 allow_pickle, force, quiet, log):
            return
        if into is None and config is None and convert_upscaler(source, output, upscaler_dir, weight_format, allow_pickle,
                                                                force, quiet, log):  # (--config: a diffusion model's)
            return
        target = output or default_target(source, controlnet_dir, allow_pickle)
        check_creatable(target, "--output")
        if config is not None:
            from sdcli.model.hub import looks_like_repo_id

            if not Path(config).expanduser().is_dir() and not looks_like_repo_id(config):
                raise UsageError(f"--config: {config} is neither a diffusers folder nor a Hub repo id")
        prompts = None
        if calibration_prompts is not None:
            if quantize is None:
                raise UsageError("--calibration-prompts only makes sense with --quantize hybrid")
            from sdcli.batch.rows import read_text

            prompts = [line.strip() for line in read_text(str(calibration_prompts)).splitlines()
                       if line.strip() and not line.lstrip().startswith("#")]
            if not prompts:
                raise UsageError(f"--calibration-prompts: no prompts in {calibration_prompts}")
        opts = ConvertOptions(weight_format=weight_format, int4=int4, force=force, allow_pickle=allow_pickle, config=config,
                              tiny_vae=tiny_vae, lora=lora, lora_scale=lora_scale, scheduler=convert_scheduler,
                              timestep_spacing=timestep_spacing, default_steps=default_steps,
                              default_guidance=default_guidance, default_vae=default_vae,
                              quantize=quantize, calibration_prompts=prompts, calibration_samples=calibration_samples)
        quiet_libraries()
        from sdcli.convert.export import convert as run_convert

        run_convert(source, target, opts, log=log)
        if not quiet:
            print(target)


def default_target(source: str, controlnet_dir: Optional[Path], allow_pickle: bool) -> Path:
    """--output's default: models/<name>, or <ControlNet folder>/<name> for a ControlNet (a folder,
    a single file, or a Hub repo, downloaded first to tell)."""
    from sdcli.convert.export import ConvertOptions, default_output_name
    from sdcli.convert.sources import resolve_source
    from sdcli.engine.controlnet import controlnet_folder

    name = default_output_name(source)
    path = Path(source).expanduser()
    if path.is_file():
        from sdcli.convert.controlnet_file import controlnet_file

        if controlnet_file(path, allow_pickle):  # A1111's single-file ControlNet
            return controlnet_folder(controlnet_dir)[0] / name
    elif path.is_dir() or (source.count("/") == 1 and not path.exists()):
        quiet_libraries()
        if resolve_source(source, ConvertOptions(allow_pickle=allow_pickle))[0] == "controlnet":
            return controlnet_folder(controlnet_dir)[0] / name
    return Path("models") / name


def convert_upscaler(source: str, output: Optional[Path], upscaler_dir: Optional[Path], weight_format: str,
                     allow_pickle: bool, force: bool, quiet: bool, log) -> bool:
    """A checkpoint that is not a diffusion model's: converted as an upscaler through spandrel
    (convert/upscaler.py) into the upscaler folder; False when `source` is not such a file."""
    from sdcli.convert.upscaler import convert_upscaler as run_upscaler, default_target, upscaler_source

    path = upscaler_source(source, allow_pickle)
    if path is None:
        return False
    target = output or default_target(path, upscaler_dir)
    check_creatable(target, "--output")
    quiet_libraries()
    run_upscaler(path, target, weight_format, allow_pickle, force, log)
    if not quiet:
        print(target)
    return True


def convert_annotator(source: str, output: Optional[Path], annotator_dir: Optional[Path], weight_format: str,
                      allow_pickle: bool, force: bool, quiet: bool, log) -> bool:
    """A ControlNet preprocessor's checkpoint (Depth Anything V2, lineart): converted into the
    annotator folder (convert/annotators.py); False when `source` is not one."""
    from sdcli.convert.annotators import annotator_source, convert_annotator as run_annotator, default_target

    found = annotator_source(source, allow_pickle)
    if found is None:
        return False
    path, kind, state = found
    target = output or default_target(path, kind, annotator_dir)
    check_creatable(target, "--output")
    quiet_libraries()
    run_annotator(path, kind, target, "fp16" if weight_format is None else weight_format, allow_pickle, force, log,
                  state)
    if not quiet:
        print(target)
    return True


def convert_openpose(source: str, output: Optional[Path], annotator_dir: Optional[Path], weight_format: str,
                     allow_pickle: bool, force: bool, quiet: bool, log) -> bool:
    """One of the OpenPose networks (body_pose_model.pth, hand_pose_model.pth, facenet.pth):
    converted into <annotator folder>/openpose_body|_hand|_face (convert/openpose.py); False when
    `source` is not one."""
    from sdcli.convert.openpose import convert_openpose as run_openpose, default_target, openpose_source

    found = openpose_source(source, allow_pickle)
    if found is None:
        return False
    path, kind = found
    target = output or default_target(kind, annotator_dir)
    check_creatable(target, "--output")
    quiet_libraries()
    run_openpose(path, kind, target, weight_format, allow_pickle, force, log)
    if not quiet:
        print(target)
    return True


def change_folder(into: Path, tiny_vae: Optional[str], weight_format: str, force: bool, log, settings: dict) -> None:
    """--into DIR: add the tiny VAE and/or set the folder's defaults (`settings`: steps, guidance,
    scheduler, spacing, vae), every setting checked before anything is written."""
    if tiny_vae is None and all(value is None for value in settings.values()):
        raise UsageError("--into needs --tiny-vae (the tiny VAE to add) or a setting to change: --default-steps, "
                         "--default-guidance, --default-vae, --scheduler, --timestep-spacing")
    from sdcli.convert.defaults import plan_folder_defaults, write_planned

    planned = plan_folder_defaults(into, **settings, adding_tiny_vae=tiny_vae is not None)
    if tiny_vae is not None:
        quiet_libraries()
        from sdcli.convert.tiny_vae import add_tiny_vae

        add_tiny_vae(into, tiny_vae, weight_format, force=force, log=log)
        planned = plan_folder_defaults(into, **settings)  # over the sdcli.json that add_tiny_vae updated
    write_planned(planned, log)
