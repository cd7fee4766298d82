"""The `sdcli` command line: one module per command."""
from sdcli.cli.app import app, main

__all__ = ["app", "main"]
