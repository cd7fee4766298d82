"""The FastAPI app: AUTOMATIC1111's /sdapi/v1 routes and OpenAI's images API (/v1, openai_api.py)
over one Worker.

Every error on the A1111 routes is JSON `{"error": kind, "detail": one line}` with its status (422 a field that
cannot be done, naming it; 404 an unknown model or route; 401 missing or wrong credentials;
413 a body too large; 503 a full queue or a server shutting down; 500 a failure), never a
traceback.  With credentials (`--api-auth`), every route asks for HTTP Basic auth, /docs and
/openapi.json included.  The /v1 routes answer OpenAI's error body instead, and with an API key
(`--api-key`) ask for `Authorization: Bearer KEY` (not the Basic credentials).  /mcp (the MCP
tools over streamable HTTP, mcp_server.py) asks for what /v1 asks for.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import os
import secrets
import struct
import sys
import tempfile
import traceback
import zlib
from pathlib import Path
from typing import Any

from fastapi import Body, FastAPI, Query
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from sdcli import __version__
from sdcli.serve import a1111, controlnet_api, openai_api
from sdcli.serve.controlnet_api import add_controlnet_routes
from sdcli.serve.extras import add_extras_routes
from sdcli.serve.models import (GenerationResponse, Img2ImgRequest, MemoryResponse, PNGInfoRequest,
                                PNGInfoResponse, ProgressResponse, SamplerItem, SchedulerItem, SDModelItem,
                                Txt2ImgRequest)
from sdcli.serve.worker import Job, ModelNotFound, QueueFull, ServerStopping, Worker
from sdcli.util.errors import SdcliError, UsageError, error_text

MAX_BODY = 64 << 20  # bytes of one request body

MCP_PATH = "/mcp"

STATUS = [(ModelNotFound, 404), (QueueFull, 503), (ServerStopping, 503), (UsageError, 422), (SdcliError, 500)]


def error_response(status: int, error: str, detail: str, headers: dict | None = None, **extra) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail, **extra}, status_code=status, headers=headers)


def sdcli_error(exc: SdcliError) -> JSONResponse:
    status = next(code for kind, code in STATUS if isinstance(exc, kind))
    extra = {"field": exc.field} if isinstance(exc, a1111.FieldError) else {}
    headers = {"Retry-After": "5"} if status == 503 else None
    return error_response(status, type(exc).__name__, str(exc), headers, **extra)


class BodyTooLarge(Exception):
    pass


async def _send_json(send, response: JSONResponse) -> None:
    await send({"type": "http.response.start", "status": response.status_code, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


class Guard:
    """Pure ASGI middleware, outermost: HTTP Basic auth on every route (the API key on /v1
    routes when there is one), the body size limit, and any exception that escaped as a 500
    JSON error (logged on stderr, not sent)."""

    def __init__(self, app, credentials: list[tuple[str, str]] | None = None, max_body: int = MAX_BODY,
                 api_key: str | None = None):
        self.app = app
        self.credentials = [(user.encode(), password.encode()) for user, password in credentials or []]
        self.max_body = max_body
        self.api_key = api_key.encode() if api_key else None

    def _bearer(self, scope) -> bytes | None:
        header = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, token = header.strip().partition(b" ")
        return token.strip() if scheme.lower() == b"bearer" and token.strip() else None

    def _refused(self, scope) -> JSONResponse | None:
        """The 401 for a request without the credentials its route asks for, else None."""
        path = scope.get("path", "")
        if not (openai_api.is_openai_path(path) or path == MCP_PATH or path.startswith(MCP_PATH + "/")):
            if self.credentials and not self._authorized(scope):
                return error_response(401, "Unauthorized", "missing or wrong credentials (HTTP Basic)",
                                      {"WWW-Authenticate": 'Basic realm="sdcli"'})
            return None
        if path.startswith(openai_api.FILES):  # a url response's image: its name is the secret
            return None
        if self.api_key is not None:
            token = self._bearer(scope)
            if token is None:
                return openai_api.error_json(401, "no API key: send Authorization: Bearer KEY (the server's --api-key)",
                                             code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
            if not secrets.compare_digest(token, self.api_key):
                return openai_api.error_json(401, "incorrect API key provided", code="invalid_api_key",
                                             headers={"WWW-Authenticate": "Bearer"})
        elif self.credentials and not self._authorized(scope):
            return openai_api.error_json(401, "missing or wrong credentials (HTTP Basic: the server's --api-auth)",
                                         code="invalid_api_key", headers={"WWW-Authenticate": 'Basic realm="sdcli"'})
        return None

    def _error(self, scope, status: int, error: str, detail: str) -> JSONResponse:
        if openai_api.is_openai_path(scope.get("path", "")):
            return openai_api.error_json(status, detail)
        return error_response(status, error, detail)

    def _authorized(self, scope) -> bool:
        header = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, encoded = header.partition(b" ")
        try:
            user, sep, password = base64.b64decode(encoded, validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return False
        ok = False
        for known_user, known_password in self.credentials:  # every pair compared, in constant time
            ok |= secrets.compare_digest(user, known_user) & secrets.compare_digest(password, known_password)
        return ok and scheme.lower() == b"basic" and bool(sep)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        refused = self._refused(scope)
        if refused is not None:
            return await _send_json(send, refused)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            return await _send_json(send, self._error(scope, 413, "PayloadTooLarge",
                                                      f"request bodies are limited to {self.max_body >> 20} MB"))
        received = 0

        async def limited():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body:
                raise BodyTooLarge()
            return message

        started = False

        async def tracking(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, tracking)
        except BodyTooLarge:
            if not started:
                await _send_json(send, self._error(scope, 413, "PayloadTooLarge",
                                                   f"request bodies are limited to {self.max_body >> 20} MB"))
        except Exception as exc:  # a bug: one line to the client, the traceback to the server's log
            traceback.print_exception(exc, file=sys.stderr)
            if not started:
                await _send_json(send, self._error(scope, 500, "InternalError", error_text(exc)))


def _validation_detail(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def create_app(worker: Worker, credentials: list[tuple[str, str]] | None = None, max_body: int = MAX_BODY,
               api_key: str | None = None, mcp_output_dir: Path | None = None, host: str | None = None) -> FastAPI:
    """`mcp_output_dir`: serve the MCP tools at /mcp, writing their images there (None: no /mcp);
    `host`: the address listened on (a loopback one turns on the SDK's DNS-rebinding checks)."""
    mcp_routes, lifespan = [], None
    if mcp_output_dir is not None:
        from sdcli.serve.mcp_server import build_server, http_app

        mcp_app, sessions = http_app(build_server(worker, mcp_output_dir), host, max_body)
        mcp_routes = list(mcp_app.routes)

        @contextlib.asynccontextmanager
        async def lifespan(_app):
            async with sessions.run():
                yield

    app = FastAPI(title="sdcli", version=__version__, lifespan=lifespan,
                  description="Stable Diffusion on the CPU through OpenVINO, behind AUTOMATIC1111's API (/sdapi/v1), "
                              "OpenAI's images API (/v1) and MCP (/mcp).")
    app.state.worker = worker

    @app.exception_handler(SdcliError)
    async def on_sdcli_error(request, exc: SdcliError):
        if openai_api.is_openai_path(request.url.path):
            return openai_api.error_from(exc)
        return sdcli_error(exc)

    @app.exception_handler(RequestValidationError)
    async def on_validation(request, exc: RequestValidationError):
        if openai_api.is_openai_path(request.url.path):
            return openai_api.error_from(exc)
        errors = json.loads(json.dumps(exc.errors(), default=str), parse_constant=str)  # NaN, Infinity: strings
        return error_response(422, "ValidationError", _validation_detail(exc), errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request, exc: StarletteHTTPException):
        if openai_api.is_openai_path(request.url.path):
            message = "no such route here" if exc.status_code == 404 else str(exc.detail)
            return openai_api.error_json(exc.status_code, message, code="not_found" if exc.status_code == 404 else None,
                                         headers=getattr(exc, "headers", None))
        names = {404: "NotFound", 405: "MethodNotAllowed"}
        return error_response(exc.status_code, names.get(exc.status_code, "HTTPError"), str(exc.detail),
                              getattr(exc, "headers", None))

    add_generation_routes(app, worker)
    add_listing_routes(app, worker)
    add_utility_routes(app, worker)
    add_extras_routes(app)  # /sdapi/v1/upscalers, extra-single-image, extra-batch-images (extras.py)
    add_controlnet_routes(app)  # /controlnet/* (controlnet_api.py)
    openai_api.add_openai_routes(app, worker)
    app.router.routes.extend(mcp_routes)
    app.add_middleware(Guard, credentials=credentials, max_body=max_body, api_key=api_key)
    return app


def add_generation_routes(app: FastAPI, worker: Worker) -> None:
    async def generate(body, kind: str) -> dict:
        plan = await run_in_threadpool(_plan, body, kind, worker.options)
        made = await asyncio.wrap_future(worker.submit(Job(kind, plan)))
        pairs = [(request, result) for request, result, _, _ in made.images]
        texts = [text for _, _, text, _ in made.images]
        images = [base64.b64encode(png).decode("ascii") for *_, png in made.images]
        if made.images:  # the ControlNet units' maps, after the images (the extension's save_detected_map)
            images += await run_in_threadpool(controlnet_api.detected_maps, plan)
        return {"images": images if body.send_images is not False else [], "parameters": plan.echo(),
                "info": a1111.info_json(plan, made.title, pairs, texts, made.interrupted)}

    @app.post("/sdapi/v1/txt2img", response_model=GenerationResponse, tags=["generation"])
    async def txt2img(body: Txt2ImgRequest):
        """Text to image."""
        return await generate(body, "txt2img")

    @app.post("/sdapi/v1/img2img", response_model=GenerationResponse, tags=["generation"])
    async def img2img(body: Img2ImgRequest):
        """Image to image, and inpainting with `mask`."""
        return await generate(body, "img2img")

    @app.get("/sdapi/v1/progress", response_model=ProgressResponse, tags=["generation"])
    async def progress(skip_current_image: bool = Query(False)):
        """The running request's progress, and a preview of its image when the model has a tiny VAE."""
        return worker.progress(not skip_current_image)

    @app.post("/sdapi/v1/interrupt", tags=["generation"])
    async def interrupt():
        """Stop the running request: it returns at once with what it made (the image being made as it stands)."""
        worker.interrupt()
        return {}

    @app.post("/sdapi/v1/skip", tags=["generation"])
    async def skip():
        """Stop the image being made and go on with the request's next one."""
        worker.skip()
        return {}


def _plan(body, kind: str, options: a1111.Options) -> a1111.Plan:
    """a1111.plan, with the body's ControlNet units (alwayson_scripts.controlnet: controlnet_api.py)."""
    plan = a1111.plan(body, kind, options)
    controlnet_api.add_units(plan)
    return plan


def add_listing_routes(app: FastAPI, worker: Worker) -> None:
    @app.get("/sdapi/v1/options", tags=["options"])
    async def get_options():
        engine = worker.engine
        model_vae = "full"  # what a request that chooses no VAE decodes with: the model folder's own default
        if engine is not None:
            with contextlib.suppress(UsageError):  # (a broken sdcli.json is answered by the requests themselves)
                model_vae = engine.folder.generation_defaults.vae or "full"
        return worker.options.as_a1111(worker.selected, bool(engine is not None and engine.folder.has_tiny_vae),
                                       model_vae)

    @app.post("/sdapi/v1/options", tags=["options"])
    async def set_options(changes: dict[str, Any] = Body(...)):
        """`sd_model_checkpoint` switches the model (a title from /sd-models; the old one is freed first)."""
        options = worker.options.updated(changes, "options")
        title = changes.get("sd_model_checkpoint")
        if title is not None:
            if not isinstance(title, str):
                raise a1111.FieldError("sd_model_checkpoint", "must be a title from /sdapi/v1/sd-models")
            worker.registry.find(title)
            await asyncio.wrap_future(worker.submit(Job("switch", title=title)))
            worker.selected = title
        worker.options = options
        return None

    @app.get("/sdapi/v1/sd-models", response_model=list[SDModelItem], tags=["lists"])
    async def sd_models():
        return [{"title": e.title, "model_name": e.title, "filename": str(e.path)} for e in worker.registry.entries()]

    @app.post("/sdapi/v1/refresh-checkpoints", tags=["lists"])
    async def refresh_checkpoints():
        await run_in_threadpool(worker.registry.refresh)
        return None

    @app.get("/sdapi/v1/samplers", response_model=list[SamplerItem], tags=["lists"])
    async def samplers():
        return a1111.samplers()

    @app.get("/sdapi/v1/schedulers", response_model=list[SchedulerItem], tags=["lists"])
    async def schedulers():
        return a1111.schedulers(worker.engine)

    @app.get("/sdapi/v1/latent-upscale-modes", tags=["lists"])
    async def latent_upscale_modes():
        """The hires fix's Latent upscalers (hr_upscaler), as A1111 lists them."""
        from sdcli.engine.hires import LATENT_MODES

        return [{"name": name} for name in LATENT_MODES]

    @app.get("/sdapi/v1/sd-vae", tags=["lists"])
    async def sd_vae():
        """No separate VAE files: the model's own VAE, or its tiny VAE (option sd_vae_decode_method: TAESD)."""
        return []

    for path in ("prompt-styles", "face-restorers", "hypernetworks", "realesrgan-models", "script-info"):
        app.add_api_route(f"/sdapi/v1/{path}", _empty_list, methods=["GET"], tags=["lists"])

    @app.get("/sdapi/v1/scripts", tags=["lists"])
    async def scripts():
        return {"txt2img": [], "img2img": []}

    @app.get("/sdapi/v1/loras", tags=["lists"])
    async def loras():
        """The LoRA files `<lora:NAME:WEIGHT>` in a prompt can name."""
        return [{"name": name, "alias": name, "path": str(path), "metadata": {}}
                for name, path in _network_files("lora", getattr(worker, "networks", None))]

    @app.get("/sdapi/v1/embeddings", tags=["lists"])
    async def embeddings():
        """The textual-inversion embeddings a prompt can use by their file name, with their vector
        width (`shape`) and count as A1111 lists them; files that cannot be read are `skipped`."""
        folders = getattr(worker, "networks", None)
        loaded, skipped = {}, {}
        for name, path in _network_files("embeddings", folders):
            entry = {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": None, "vectors": None}
            try:
                entry.update(embedding_shape(path, bool(folders and folders.allow_pickle)))
                loaded[name] = entry
            except UsageError:
                skipped[name] = entry
        return {"loaded": loaded, "skipped": skipped}


async def _empty_list():
    return []


def embedding_shape(path: Path, allow_pickle: bool) -> dict:
    """{"shape": vector width, "vectors": count} of an embedding file (SDXL's: its clip_l part's
    width and the count of its vectors); UsageError for a file that cannot be read."""
    from sdcli.model.embedding_file import read_embedding

    first = next(iter(read_embedding(path, allow_pickle).vectors.values()))
    return {"shape": int(first.shape[-1]), "vectors": int(first.shape[0])}


def _network_files(kind: str, folders=None) -> list[tuple[str, Path]]:
    from sdcli.engine.networks import NetworkFolders

    folders = folders or NetworkFolders()
    try:
        folder = folders.lora_folder() if kind == "lora" else folders.embeddings_folder()
    except UsageError:
        return []
    if folder is None:
        return []
    suffixes = (".safetensors", ".pt", ".ckpt", ".bin") if folders.allow_pickle else (".safetensors",)
    return sorted((path.stem, path) for path in folder.rglob("*") if path.suffix.lower() in suffixes)


def add_utility_routes(app: FastAPI, worker: Worker) -> None:
    @app.post("/sdapi/v1/png-info", response_model=PNGInfoResponse, tags=["utilities"])
    async def png_info(body: PNGInfoRequest):
        """The generation settings a PNG carries (its `parameters` text chunk), parsed as A1111 does."""
        return await run_in_threadpool(_png_info, body.image)

    @app.get("/sdapi/v1/memory", response_model=MemoryResponse, tags=["utilities"])
    async def memory():
        from sdcli.engine.memory import available_bytes, resident_bytes

        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError):
            total = None
        free = available_bytes()
        return {"ram": {"free": free, "used": resident_bytes(), "total": total}, "cuda": {"error": "unavailable"}}


def _png_info(text: str) -> dict:
    from sdcli.imaging.image_io import read_png_text

    data = a1111.decode_base64("image", text)
    with tempfile.TemporaryDirectory(prefix="sdcli-serve-") as tmp:
        path = Path(tmp) / "image.png"
        path.write_bytes(data)
        try:
            items = read_png_text(path)
        except (UsageError, ValueError, IndexError, struct.error, zlib.error):
            raise a1111.FieldError("image", "is not a readable PNG image") from None
    info = items.pop("parameters", "")
    return {"info": info, "items": items, "parameters": a1111.png_info_fields(info) if info else {}}
