"""`sdcli info`: the runtime, a converted model's components, or a PNG's settings."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from sdcli import __version__
from sdcli.cli.app import app, user_errors
from sdcli.util.errors import UsageError


@app.command()
def info(
    target: Optional[Path] = typer.Argument(None, help="A converted model folder to describe."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """OpenVINO version, devices and CPU capabilities; with a model folder, its components;
    with a PNG, the settings it was made with."""
    with user_errors("interrupted"):
        from sdcli.model.info import describe_model
        from sdcli.runtime.info import describe_runtime

        if target is not None and target.is_file():
            from sdcli.imaging.image_io import read_png_text
            from sdcli.imaging.params import parse_parameters

            text = read_png_text(target).get("parameters")
            if text is None:
                raise UsageError(f"{target} has no generation settings (no 'parameters' text chunk)")
            if as_json:
                prompt, negative, fields = parse_parameters(text)
                print(json.dumps({"prompt": prompt, "negative_prompt": negative, **fields}, ensure_ascii=False, indent=1))
            else:
                print(text)
            return

        data = {"runtime": describe_runtime()}
        if target is not None:
            data["model"] = describe_model(target)
        if as_json:
            print(json.dumps(data, indent=1))
            return
        rt = data["runtime"]
        print(f"sdcli {__version__}, OpenVINO {rt['openvino']}")
        for dev in rt["devices"]:
            print(f"  {dev['name']}: {dev['full_name']}  capabilities: {', '.join(dev['capabilities'])}")
        if "model" in data:
            m = data["model"]
            print(f"model {m['path']} ({m['total_mb']:.1f} MB{', ' + m['weight_format'] if m.get('weight_format') else ''})")
            for c in m["components"]:
                print(f"  {c['name']:<16} {c['size_mb']:>9.1f} MB  weights {c['weights']}")
            print(defaults_line(m))


def defaults_line(model: dict) -> str:
    """`generate`'s defaults for the model: its folder's steps, guidance and VAE (sdcli.json), and its scheduler."""
    defaults, scheduler = model["defaults"], model["scheduler"]
    own = [f"{defaults['steps']} steps" if "steps" in defaults else None,
           f"guidance {defaults['guidance_scale']:g}" if "guidance_scale" in defaults else None,
           f"{defaults['vae']} VAE" if "vae" in defaults else None]
    text = ", ".join(item for item in own if item) or "none set in sdcli.json"
    spacing = f", {scheduler['timestep_spacing']} spacing" if scheduler.get("timestep_spacing") else ""
    return f"  defaults: {text}; scheduler {scheduler.get('class') or '?'}{spacing}"
