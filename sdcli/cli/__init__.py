"""The `sdcli` command line: one module per command, on the Typer app of app.py."""
from sdcli.cli import convert, generate, info, bench, batch, serve, cache, mcp, upscale, detect  # noqa: F401  (each registers its command)
from sdcli.cli.app import app, main

__all__ = ["app", "main"]
