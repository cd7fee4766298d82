"""`sdcli serve`: AUTOMATIC1111's HTTP API (/sdapi/v1) and OpenAI's images API (/v1) with the
model kept compiled between requests (the `serve` extra: FastAPI, uvicorn and python-multipart,
imported only here)."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer

from sdcli.cli.app import CACHE_MAX_GB_HELP, app, finite, use_cache_max_gb, user_errors
from sdcli.util.errors import SdcliError, UsageError


def output_folder(value: Optional[Path]) -> Path:
    """Where the MCP tools write their images: `value`, else $SDCLI_OUTPUT_DIR, else ~/sdcli-images
    (made with the first image; UsageError now when it could not be)."""
    folder = (value or Path(os.environ.get("SDCLI_OUTPUT_DIR") or Path.home() / "sdcli-images")).expanduser().resolve()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise UsageError(f"--output-dir: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--output-dir: {folder} cannot be written ({existing} is not writable)")
    return folder


def mcp_installed() -> bool:
    try:
        import mcp.server.mcpserver  # noqa: F401
    except ImportError:
        return False
    return True


def parse_auth(value: Optional[str]) -> list[tuple[str, str]]:
    """USER:PASS[,USER:PASS] -> [(user, password)]."""
    if value is None:
        return []
    pairs = []
    for item in value.split(","):
        user, sep, password = item.partition(":")
        if not sep or not user or not password:
            raise UsageError(f"--api-auth takes USER:PASS[,USER:PASS], got {item!r}")
        pairs.append((user, password))
    return pairs


@app.command()
def serve(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="The model to start with: a converted folder or a Hub repo of one [default: $SDCLI_MODEL, else the first under --models-dir]."),
    models_dir: Path = typer.Option(Path("models"), "--models-dir", help="Converted model folders a request may switch to, by their folder name (A1111's sd_model_checkpoint)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface; think of --api-auth)."),
    port: int = typer.Option(7860, "--port", min=0, max=65535, help="Port (A1111's 7860; 0: any free one, printed)."),
    api_auth: Optional[str] = typer.Option(None, "--api-auth", help="USER:PASS[,USER:PASS]: HTTP Basic credentials asked on every route (on OpenAI's /v1 routes too, unless --api-key is given)."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="SDCLI_API_KEY", show_envvar=False, help="The key OpenAI's /v1 routes ask for (Authorization: Bearer KEY) [default: $SDCLI_API_KEY; none: /v1 asks what --api-auth asks]."),
    queue_size: int = typer.Option(32, "--queue-size", min=0, max=10_000, help="Requests that may wait behind the running one; more are answered 503 at once."),
    precision: str = typer.Option("auto", "--precision", help="As generate's: auto, f32, bf16, f16 (a request gives generate's pixels with the same one)."),
    lora_dir: Optional[Path] = typer.Option(None, "--lora-dir", help="Where <lora:NAME:WEIGHT> in a prompt finds NAME [default: $SDCLI_LORA_DIR, else models/Lora]."),
    embeddings_dir: Optional[Path] = typer.Option(None, "--embeddings-dir", help="Textual-inversion embeddings, used where their file name is a word of a prompt [default: $SDCLI_EMBEDDINGS_DIR, else models/embeddings]."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Also read LoRAs and embeddings saved as pickles (.pt, .ckpt, .bin): only files you trust."),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", help="Where the MCP tools at /mcp write their images [default: $SDCLI_OUTPUT_DIR, else ~/sdcli-images]."),
    cache_max_gb: Optional[float] = typer.Option(None, "--cache-max-gb", min=0.0, callback=finite, metavar="GB", help=CACHE_MAX_GB_HELP),
):
    """Serve AUTOMATIC1111's web API (txt2img, img2img, progress, options, ...), OpenAI's
    images API (/v1/images/generations, edits, variations, /v1/models) and MCP's tools
    (streamable HTTP at /mcp) with the model kept warm between requests."""
    with user_errors("interrupted"):
        use_cache_max_gb(cache_max_gb)
        credentials = parse_auth(api_auth)
        if api_key is not None and not api_key.strip():
            raise UsageError("--api-key (or $SDCLI_API_KEY) is empty: give a key, or leave it out")
        try:
            import fastapi  # noqa: F401
            import python_multipart  # noqa: F401  (OpenAI's image edits and variations are multipart)
            import uvicorn  # noqa: F401
        except ImportError:
            raise UsageError('sdcli serve needs FastAPI, uvicorn and python-multipart: pip install "sdcli[serve]"') from None
        from sdcli.model.folder import ModelFolder
        from sdcli.runtime.core import check_precision
        from sdcli.serve.server import listen, run

        check_precision(precision)
        folder = output_folder(output_dir) if mcp_installed() else None
        if folder is None:
            print('sdcli: serve: no MCP at /mcp (the mcp package is missing: pip install "sdcli[serve]")',
                  file=sys.stderr)
        from sdcli.engine.networks import NetworkFolders

        networks = NetworkFolders(lora_dir, embeddings_dir, allow_pickle)
        networks.check()  # a folder named that does not exist
        path = None
        given = model or os.environ.get("SDCLI_MODEL")
        if given or not (models_dir.is_dir() and any(models_dir.glob("*/model_index.json"))):
            from sdcli.model.hub import resolve_model

            path = Path(resolve_model(given))
            ModelFolder.open(path)  # a broken folder is reported now, not at the first request
        try:
            sock = listen(host, port)
        except OSError as exc:
            raise SdcliError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        except (TypeError, ValueError) as exc:  # a NUL, or a name the IDNA codec refuses
            raise UsageError(f"--host {host!r} is not a host name or address: {exc}") from None
        bound = sock.getsockname()
        shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]

        def ready(server) -> None:
            mcp = f", MCP (/mcp, images written under {folder})" if folder is not None else ""
            print(f"sdcli: serving AUTOMATIC1111's API (/sdapi/v1) and OpenAI's images API (/v1){mcp} on "
                  f"http://{shown}:{bound[1]} (docs: /docs)",
                  file=sys.stderr, flush=True)

        run(sock, path, models_dir if models_dir.is_dir() else None, credentials, queue_size, precision, ready,
            networks, api_key.strip() if api_key else None, mcp_output_dir=folder, host=host)
