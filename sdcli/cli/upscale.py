"""`sdcli upscale`: images upscaled as A1111's Extras tab does, by a converted model upscaler
(`sdcli convert` of an ESRGAN-family checkpoint) or by Lanczos or Nearest (engine/upscale.py)."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

from sdcli.cli.app import app, finite, image_output_paths, user_errors
from sdcli.util.errors import UsageError


@app.command()
def upscale(
    images: List[Path] = typer.Argument(..., help="Image files to upscale (any format OpenCV reads)."),
    upscaler: str = typer.Option(..., "--upscaler", "-u", help="A converted upscaler's name in the upscaler folder (`sdcli convert UPSCALER.safetensors`), or Lanczos, Nearest."),
    scale: float = typer.Option(4.0, "--scale", callback=finite, help="Times the size, more than 1 (A1111's 'Resize'): a model upscaler runs until the image is at least that large (up to 3 times), then Lanczos to it, each side down to a multiple of 8."),
    tile: int = typer.Option(192, "--tile", min=0, max=8192, help="Model upscalers: tile size in pixels (A1111's ESRGAN tile); 0: the whole image at once."),
    tile_overlap: int = typer.Option(8, "--tile-overlap", min=0, max=8191, help="Model upscalers: pixels each tile overlaps the previous one, blended (A1111's ESRGAN tile overlap)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="PNG to write (one image)."),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", help="Folder for the PNGs, each <name>-x<scale>.png [default: the current folder]."),
    upscaler_dir: Optional[Path] = typer.Option(None, "--upscaler-dir", help="Where --upscaler NAME is found [default: $SDCLI_UPSCALER_DIR, else models/ESRGAN]."),
    rgb: bool = typer.Option(False, "--rgb", help="Feed the model RGB; A1111 feeds its upscalers BGR (the default, for the same pixels)."),
    device: str = typer.Option("CPU", "--device", help="OpenVINO device."),
    precision: str = typer.Option("auto", "--precision", help="auto, f32, bf16, f16."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress on stderr."),
    as_json: bool = typer.Option(False, "--json", help="One JSON line per image on stdout."),
):
    """Upscale images with a model upscaler (ESRGAN, Real-ESRGAN, SPAN, SwinIR, HAT, ... converted
    by `sdcli convert`) or Lanczos/Nearest, tiled as A1111 does."""
    with user_errors("interrupted; the images written so far stay"):
        from sdcli.engine.upscale import check_scale
        from sdcli.runtime.core import check_precision

        check_scale(scale)
        if tile and tile_overlap >= tile:
            raise UsageError(f"--tile-overlap ({tile_overlap}) must be less than --tile ({tile})")
        check_precision(precision)
        paths = image_output_paths(list(images), output, output_dir, Path("."),
                                   lambda image: f"{image.stem}-x{scale:g}.png", "sdcli upscale", "images")
        from sdcli.model.upscalers import BUILTIN, find_upscaler

        if upscaler.lower() not in (b.lower() for b in BUILTIN):
            find_upscaler(upscaler, upscaler_dir)  # not there: one line naming the folder, before any work
        from sdcli.imaging.image_io import read_rgb

        for image in images:  # every image readable before anything is written
            read_rgb(image)
        run(list(images), paths, upscaler, scale, tile, tile_overlap, upscaler_dir, not rgb, device, precision,
            quiet, as_json)


def run(images, paths, name, scale, tile, overlap, folder, bgr, device, precision, quiet, as_json) -> None:
    from sdcli.engine import upscale as up
    from sdcli.imaging.image_io import read_png_text, read_rgb, save_png
    from sdcli.runtime.core import Runtime, default_cache_dir
    from sdcli.util.progress import StepProgress

    runtime = Runtime(device, precision, default_cache_dir())
    upscaler = up.resolve(name, runtime, folder, bgr=bgr)
    label_name = upscaler if isinstance(upscaler, str) else upscaler.name
    for i, (image_path, out_path) in enumerate(zip(images, paths)):
        started = time.perf_counter()
        image = read_rgb(image_path)
        tiles = [0]
        label = f"image {i + 1}/{len(images)}" if len(images) > 1 else "upscaling"
        with StepProgress(f"{label} (tiles)", enabled=not (quiet or as_json)) as bar:

            def on_tile(info, bar=bar):
                tiles[0] += 1
                bar.update(info)

            result = up.upscale(image, upscaler, scale, tile, overlap, on_tile)
        parameters = None
        if image_path.suffix.lower() == ".png":
            try:
                parameters = read_png_text(image_path).get("parameters")
            except (UsageError, OSError):
                parameters = None
        out_path.parent.mkdir(parents=True, exist_ok=True)
        save_png(out_path, result, parameters)
        if as_json:
            print(json.dumps({"path": str(out_path), "source": str(image_path), "upscaler": label_name,
                              "scale": scale, "width": int(result.shape[1]), "height": int(result.shape[0]),
                              "tiles": tiles[0], "seconds": round(time.perf_counter() - started, 4)}), flush=True)
        elif not quiet:
            print(out_path, flush=True)
    sys.stdout.flush()
