"""`sdcli detect MODULE IMAGE...`: the control maps A1111's ControlNet extension's preprocessor
MODULE makes of images (its /controlnet/detect), by the numpy/OpenCV modules of
imaging/preprocessors.py or the converted networks of the neural ones (imaging/annotators.py),
written as PNGs."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

from sdcli.cli.app import app, finite, image_output_paths, user_errors, warn
from sdcli.util.errors import UsageError


def check_sliders(spec, processor_res: Optional[int], thresholds: dict) -> None:
    """A threshold the module has not got, or outside its slider, is a usage error (the extension
    would silently use the default); --processor-res on a module that works at the image's size
    only warns."""
    for name, value in thresholds.items():
        if value is not None:
            spec.check_value(name, value, "--" + name.replace("_", "-"))
    if processor_res is not None and spec.slider("processor_res") is None:
        warn(f"--processor-res: preprocessor {spec.name} works at the image's size (as in A1111), so it is not used")


@app.command()
def detect(
    module: str = typer.Argument(..., help="The preprocessor (A1111 ControlNet's module name or label): none, canny, invert, lineart_standard, scribble_xdog, shuffle, tile_resample, tile_colorfix, tile_colorfix+sharp, blur_gaussian, threshold, recolor_luminance, recolor_intensity, t2ia_color_grid (color), inpaint_only; with their networks converted (sdcli convert): depth_anything_v2, lineart (lineart_realistic), lineart_coarse, lineart_anime, softedge_hed, softedge_hedsafe, scribble_hed, softedge_pidinet, softedge_pidisafe, scribble_pidinet, openpose, openpose_hand, openpose_face, openpose_faceonly, openpose_full."),
    images: List[Path] = typer.Argument(..., help="Image files (any format OpenCV reads)."),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", "-o", help="Folder for the maps, each <name>-<module>.png [default: beside each image]."),
    output: Optional[Path] = typer.Option(None, "--output", help="PNG to write (one image)."),
    processor_res: Optional[int] = typer.Option(None, "--processor-res", min=64, max=2048, help="The image is resized so its short side is this before the module runs, for the modules that use it (canny, lineart_standard, scribble_xdog, blur_gaussian, threshold, t2ia_color_grid, depth_anything_v2, lineart, lineart_coarse, lineart_anime, softedge_hed, softedge_hedsafe, scribble_hed, softedge_pidinet, softedge_pidisafe, scribble_pidinet, shuffle and the openpose ones) [default: 512]."),
    threshold_a: Optional[float] = typer.Option(None, "--threshold-a", callback=finite, help="The module's first slider (canny: low threshold 100; scribble_xdog: 32; tile_resample: down-sampling rate 1; tile_colorfix: variation 8; blur_gaussian: sigma 9; threshold: 127; recolor_*: gamma 1) [default: the module's]."),
    threshold_b: Optional[float] = typer.Option(None, "--threshold-b", callback=finite, help="The module's second slider (canny: high threshold 200; tile_colorfix+sharp: sharpness 1) [default: the module's]."),
    annotator_dir: Optional[Path] = typer.Option(None, "--annotator-dir", help="The folder of the converted preprocessor networks (depth_anything_v2, lineart, ...) [default: $SDCLI_ANNOTATOR_DIR, else models/annotators]."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Do not print the files written."),
    as_json: bool = typer.Option(False, "--json", help="One JSON line per image on stdout."),
):
    """Make the control maps of images with an A1111 ControlNet preprocessor (its /controlnet/detect):
    numpy/OpenCV, and the neural ones by OpenVINO from the networks `sdcli convert` wrote."""
    with user_errors("interrupted; the maps written so far stay"):
        from sdcli.imaging.image_io import read_rgb
        from sdcli.imaging.preprocessors import PREPROCESSORS, resolve

        spec = PREPROCESSORS[resolve(module)]
        check_sliders(spec, processor_res, {"threshold_a": threshold_a, "threshold_b": threshold_b})
        paths = image_output_paths(list(images), output, output_dir, None,
                                   lambda image: f"{image.stem}-{spec.name}.png", "sdcli detect", "maps")
        pictures = [read_rgb(image) for image in images]  # every image readable before anything is written
        run(spec, list(images), pictures, paths, processor_res, threshold_a, threshold_b, quiet, as_json,
            {} if annotator_dir is None else {"annotator_dir": annotator_dir})


def run(spec, images, pictures, paths, processor_res, threshold_a, threshold_b, quiet, as_json, extra=None) -> None:
    from sdcli.imaging.image_io import save_png
    from sdcli.imaging.preprocessors import PROCESSOR_RES, detect

    res = PROCESSOR_RES if processor_res is None else processor_res
    settings = spec.settings(res, threshold_a, threshold_b)
    for image_path, picture, out_path in zip(images, pictures, paths):
        started = time.perf_counter()
        result = detect(picture, spec.name, res, threshold_a, threshold_b, **(extra or {}))
        out_path.parent.mkdir(parents=True, exist_ok=True)
        save_png(out_path, result)
        if as_json:
            print(json.dumps({"path": str(out_path), "source": str(image_path), "module": spec.name,
                              "width": int(result.shape[1]), "height": int(result.shape[0]), **settings,
                              "seconds": round(time.perf_counter() - started, 4)}), flush=True)
        elif not quiet:
            print(out_path, flush=True)
    sys.stdout.flush()
