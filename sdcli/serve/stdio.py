"""`sdcli mcp`: the MCP tools (mcp_server.py) over stdio, on a Worker of this process that keeps
the model's engine warm between calls."""
from __future__ import annotations

from pathlib import Path

from sdcli.serve.worker import ModelRegistry, Worker


def run_stdio(model: Path | None, models_dir: Path | None, output_dir: Path, precision: str = "auto",
              device: str = "CPU", networks=None) -> None:
    """Serve until the client closes stdin."""
    import anyio

    from sdcli.serve.mcp_server import build_server

    registry = ModelRegistry(models_dir, model)
    selected = model.resolve().name if model is not None else next((e.title for e in registry.entries()), None)
    worker = Worker(registry, selected, queue_size=32, precision=precision, networks=networks, device=device)
    server = build_server(worker, output_dir)
    worker.start()  # the model loads and compiles while the client starts up
    try:
        anyio.run(server.run_stdio_async)
    finally:
        worker.stop()
        worker.join(timeout=30)
