"""`sdcli mcp`: the MCP tools (generate_image, edit_image, list_models, image_parameters) over
stdio, for desktop assistants, with the model's engine kept warm in this process (the `serve`
extra's official `mcp` SDK, imported only here and in sdcli.serve)."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer

from sdcli.cli.app import app, user_errors
from sdcli.cli.serve import mcp_installed, output_folder
from sdcli.util.errors import UsageError


@app.command()
def mcp(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="The model to start with: a converted folder or a Hub repo of one [default: $SDCLI_MODEL, else the first under --models-dir]."),
    models_dir: Path = typer.Option(Path("models"), "--models-dir", help="Converted model folders a tool call may name (list_models), by their folder name."),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", "-o", help="Where the images are written (each also returned as image content) [default: $SDCLI_OUTPUT_DIR, else ~/sdcli-images]."),
    device: str = typer.Option("CPU", "--device", help="OpenVINO device: CPU, GPU, NPU, AUTO, ..."),
    precision: str = typer.Option("auto", "--precision", help="As generate's: auto, f32, bf16, f16 (a tool call gives generate's pixels with the same one)."),
    lora_dir: Optional[Path] = typer.Option(None, "--lora-dir", help="Where <lora:NAME:WEIGHT> in a prompt finds NAME [default: $SDCLI_LORA_DIR, else models/Lora]."),
    embeddings_dir: Optional[Path] = typer.Option(None, "--embeddings-dir", help="Textual-inversion embeddings, used where their file name is a word of a prompt [default: $SDCLI_EMBEDDINGS_DIR, else models/embeddings]."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Also read LoRAs and embeddings saved as pickles (.pt, .ckpt, .bin): only files you trust."),
):
    """Serve MCP's tools over stdio for a desktop assistant: generate_image, edit_image,
    list_models, image_parameters (the same tools as /mcp on `sdcli serve`).  Logs go to stderr."""
    with user_errors("interrupted"):
        if not mcp_installed():
            raise UsageError('sdcli mcp needs the mcp package: pip install "sdcli[serve]"')
        from sdcli.engine.networks import NetworkFolders
        from sdcli.model.folder import ModelFolder
        from sdcli.runtime.core import check_precision
        from sdcli.serve.stdio import run_stdio

        check_precision(precision)
        folder = output_folder(output_dir)
        networks = NetworkFolders(lora_dir, embeddings_dir, allow_pickle)
        networks.check()
        path = None
        given = model or os.environ.get("SDCLI_MODEL")
        if given or not (models_dir.is_dir() and any(models_dir.glob("*/model_index.json"))):
            from sdcli.model.hub import resolve_model

            path = Path(resolve_model(given))
            ModelFolder.open(path)  # a broken folder is reported now, not at the first call
        print(f"sdcli: mcp: serving generate_image, edit_image, list_models, image_parameters on stdio; "
              f"images written under {folder}", file=sys.stderr, flush=True)
        run_stdio(path, models_dir if models_dir.is_dir() else None, folder, precision, device, networks)
