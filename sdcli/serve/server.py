"""Running the app with uvicorn: the worker starts with the server, and SIGTERM or Ctrl-C stop
both cleanly (the running request is interrupted and answered with what it made, the waiting
ones get 503, then uvicorn finishes the open responses and exits)."""
from __future__ import annotations

from pathlib import Path

from sdcli.serve.app import create_app
from sdcli.serve.worker import ModelRegistry, Worker


def listen(host: str, port: int):
    """A listening socket (OSError when the address is taken or not ours)."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def run(sock, model: Path | None, models_dir: Path | None, credentials: list[tuple[str, str]] | None = None,
        queue_size: int = 32, precision: str = "auto", on_ready=None, networks=None, api_key: str | None = None,
        mcp_output_dir: Path | None = None, host: str | None = None, device: str = "CPU") -> None:
    """Serve on the listening socket `sock` until SIGTERM or Ctrl-C (`mcp_output_dir`: the MCP
    tools at /mcp write there; None: no /mcp)."""
    import uvicorn

    registry = ModelRegistry(models_dir, model)
    selected = model.resolve().name if model is not None else next((e.title for e in registry.entries()), None)
    worker = Worker(registry, selected, queue_size=queue_size, precision=precision, networks=networks, device=device)
    app = create_app(worker, credentials, api_key=api_key, mcp_output_dir=mcp_output_dir, host=host)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            worker.stop()  # the running job ends within a step; uvicorn then drains the open requests
            super().handle_exit(sig, frame)

        async def startup(self, sockets=None) -> None:
            await super().startup(sockets)
            if on_ready is not None and self.started:
                on_ready(self)

    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=30)
    server = Server(config)
    worker.start()
    try:
        server.run(sockets=[sock])
    finally:
        worker.stop()
        worker.join(timeout=30)
