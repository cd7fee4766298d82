"""The MCP tools (the official `mcp` SDK's MCPServer): generate_image, edit_image, list_models
and image_parameters, for `sdcli mcp` (stdio) and /mcp on `sdcli serve` (streamable HTTP).

A tool call becomes the OpenAI routes' Plan (openai_api.plan_for, hence a1111.plan: the same
checks, seeds, defaults and scheduler choice) and runs as a Job on a Worker (serve's queue; in
`sdcli mcp` a Worker of its own, which keeps the model's engine warm in the process).  Each
image comes back as MCP image content (PNG, base64) and as the path of the PNG written
(atomically, with the PNG parameters `sdcli generate` writes) under the output folder.  With a
progress token, a progress notification follows each denoising step.  A mistake is a tool
error (isError) of one line, never a traceback.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import json
import secrets
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Optional

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, ImageContent, TextContent
from pydantic import Field, ValidationError

from sdcli import __version__
from sdcli.serve import a1111, openai_api
from sdcli.serve.worker import Job, ModelNotFound, Worker
from sdcli.util.errors import UsageError, error_text, is_run_failure

INSTRUCTIONS = ("Stable Diffusion images made on this computer's CPU through OpenVINO (sdcli). generate_image draws "
                "a prompt; edit_image repaints an image (inpainting with a mask, image-to-image, or reference-image "
                "editing on FLUX.2-klein); list_models names the models; image_parameters reads the settings a PNG "
                "stores. Each image is returned and written as a PNG under the server's output folder.")
# A1111's field names (FieldError.field) as the tools name them
PARAMS = {"cfg_scale": "guidance_scale", "sampler_name": "scheduler", "denoising_strength": "strength",
          "init_images[0]": "image", "override_settings.sd_model_checkpoint": "model", "n_iter": "count",
          "hr_scale": "hires_scale", "hr_resize_x": "hires_width", "hr_resize_y": "hires_height",
          "hr_upscaler": "hires_upscaler", "hr_second_pass_steps": "hires_steps"}
HIRES_ARGUMENTS = ("scale", "width", "height", "upscaler", "steps", "denoise")  # generate_image's hires_*


def one_line(text: str) -> str:
    return " ".join(str(text).split()) or "failed"


def tool_error(exc: BaseException) -> ToolError:
    """The one-line tool error for what a tool call raised (a traceback only for a bug, on stderr)."""
    if isinstance(exc, ToolError):
        return exc
    if isinstance(exc, openai_api.OpenAIError):
        message = exc.message.replace("hires.", "hires_")  # (the arguments' names)
    elif isinstance(exc, ModelNotFound):
        message = f"{error_text(exc).split(':')[0]}: list_models names the models here"
    elif isinstance(exc, a1111.FieldError):
        name = PARAMS.get(exc.field, exc.field)
        message = str(exc)
        message = name + message[len(exc.field):] if message.startswith(exc.field + ":") else message
        message = openai_api._flags_to_fields(message).replace("hires.", "hires_")
    elif isinstance(exc, UsageError):
        message = openai_api._flags_to_fields(str(exc)).replace("hires.", "hires_")
    elif is_run_failure(exc):
        message = error_text(exc)
    else:  # a bug: the traceback to the server's log, one line to the client
        traceback.print_exception(exc, file=sys.stderr)
        message = error_text(exc)
    return ToolError(one_line(message))


class ImageWriter:
    """Writes each image under `folder`: TIMESTAMP-SEED-TOKEN.png, atomically."""

    def __init__(self, folder: Path):
        self.folder = Path(folder).expanduser().resolve()

    def write(self, png: bytes, seed: int) -> Path:
        from sdcli.util.fsutil import atomic_write_bytes

        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{seed}-{secrets.token_hex(3)}.png"
        atomic_write_bytes(path, png)
        return path


def _size(width: int | None, height: int | None) -> str | None:
    for name, value in (("width", width), ("height", height)):
        if value is not None and (value <= 0 or value % 8 or value > a1111.MAX_SIDE):
            raise ToolError(f"{name}: must be a multiple of 8 from 8 to {a1111.MAX_SIDE}, got {value}")
    if (width is None) != (height is None):
        raise ToolError("width and height: give both, or neither (the model's own size)")
    return None if width is None else f"{width}x{height}"


def _image_bytes(name: str, value: str) -> bytes:
    """The bytes of `value`: a path to an image file, or base64 (a data: URL too)."""
    text = (value or "").strip()
    if not text:
        raise ToolError(f"{name}: give an image file's path or the image as base64")
    if text.startswith("data:"):
        text = text.partition(",")[2]
    path = Path(text).expanduser()
    try:
        if len(text) < 4096 and path.is_file():
            return path.read_bytes()
    except OSError as exc:
        raise ToolError(f"{name}: cannot read {path}: {exc.strerror or exc}") from None
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ToolError(f"{name}: {text[:80]!r} is neither an image file here nor base64") from None
    if not data:
        raise ToolError(f"{name}: the base64 is empty")
    return data


def _read(name: str, data: bytes, mask: bool = False):
    from sdcli.imaging.image_io import read_mask, read_rgb

    with tempfile.TemporaryDirectory(prefix="sdcli-mcp-") as tmp:
        path = Path(tmp) / "image"
        path.write_bytes(data)
        try:
            return read_mask(path) if mask else read_rgb(path)
        except UsageError as exc:
            raise ToolError(f"{name}: {one_line(str(exc).replace(str(path), 'it'))}") from None


async def run_job(worker: Worker, plan: a1111.Plan, ctx: Context | None):
    """The Worker's Made for `plan`, with a progress notification after each denoising step."""
    loop = asyncio.get_running_loop()
    updates: asyncio.Queue = asyncio.Queue()

    def on_step(index: int, count: int, info) -> None:  # on the worker's thread
        loop.call_soon_threadsafe(updates.put_nowait, (index, count, info.index + 1, info.total))

    made = asyncio.ensure_future(asyncio.wrap_future(worker.submit(Job(plan.kind, plan, on_step=on_step))))

    async def report(update) -> None:
        index, count, step, total = update
        if ctx is not None:
            await ctx.report_progress(index * total + step, count * total,
                                      f"image {index + 1}/{count}, step {step}/{total}")

    while not made.done():
        getter = asyncio.ensure_future(updates.get())
        await asyncio.wait({made, getter}, return_when=asyncio.FIRST_COMPLETED)
        if getter.done():
            await report(getter.result())
        else:
            getter.cancel()
    while not updates.empty():
        await report(updates.get_nowait())
    return made.result()


async def _images(worker: Worker, writer: ImageWriter, plan: a1111.Plan, ctx: Context | None) -> CallToolResult:
    try:
        made = await run_job(worker, plan, ctx)
    except Exception as exc:  # noqa: BLE001  (answered as a tool error)
        raise tool_error(exc) from None
    content: list[Any] = []
    written = []
    for request, result, text, png in made.images:
        try:
            path = await asyncio.to_thread(writer.write, png, result.seed)
        except OSError as exc:
            raise ToolError(f"cannot write the image under {writer.folder}: {exc.strerror or exc}") from None
        content.append(ImageContent(type="image", data=base64.b64encode(png).decode("ascii"), mime_type="image/png"))
        written.append({"path": str(path), "seed": result.seed, "width": result.width, "height": result.height,
                        "steps": request.steps, "scheduler": result.scheduler, "model": made.title,
                        "parameters": text})
    summary = {"images": written, "interrupted": made.interrupted, "notes": made.notes}
    lines = [f"wrote {item['path']} ({item['width']}x{item['height']}, seed {item['seed']}, model {item['model']})"
             for item in written] or ["no image was made (interrupted)"]
    content.append(TextContent(type="text", text="\n".join(lines) + "\n" + json.dumps(summary, ensure_ascii=False)))
    return CallToolResult(content=content, structured_content=summary)


class OneLineServer(MCPServer):
    """MCPServer whose argument validation errors are one line (pydantic's are a block)."""

    async def call_tool(self, name: str, arguments: dict[str, Any], context=None):
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as exc:
            cause = exc.__cause__
            if not isinstance(cause, ValidationError):
                raise
            parts = [f"{'.'.join(str(p) for p in error.get('loc', ())) or 'arguments'}: {error.get('msg', 'invalid')}"
                     for error in cause.errors()]
            raise ToolError(one_line(f"Error executing tool {name}: " + "; ".join(parts))) from cause


def build_server(worker: Worker, output_dir: Path) -> MCPServer:
    """The MCP server whose tools run on `worker` and write under `output_dir`."""
    writer = ImageWriter(output_dir)
    server = OneLineServer("sdcli", instructions=INSTRUCTIONS, version=__version__, log_level="WARNING")

    def plan(fields: dict, kind: str, prompt: str, image=None, mask=None) -> a1111.Plan:
        try:
            if fields.get("model"):
                worker.registry.find(fields["model"])
            return openai_api.plan_for(worker, fields, kind, image, mask, prompt)
        except Exception as exc:  # noqa: BLE001
            raise tool_error(exc) from None

    @server.tool(structured_output=False)
    async def generate_image(
        prompt: str = Field(description="What to draw (A1111's prompt syntax works: (word:1.2), <lora:NAME:W>)."),
        negative_prompt: str = Field("", description="What to steer away from."),
        width: Optional[int] = Field(None, description="Width in pixels, a multiple of 8 [the model's]."),
        height: Optional[int] = Field(None, description="Height in pixels, a multiple of 8 [the model's]."),
        steps: Optional[int] = Field(None, description="Denoising steps [the model folder's default, else 20]."),
        guidance_scale: Optional[float] = Field(None, description="Classifier-free guidance [the model folder's default, else 7.5]."),
        seed: Optional[int] = Field(None, description="The seed [random]; sdcli generate --seed gives the same image."),
        scheduler: Optional[str] = Field(None, description="A scheduler (sdcli's or A1111's sampler name) [the model's own]."),
        model: Optional[str] = Field(None, description="A model's name from list_models [the server's model]."),
        hires_scale: Optional[float] = Field(None, description="Hires fix (any hires_* argument turns it on): a second image-to-image pass at this many times the size [2]."),
        hires_width: Optional[int] = Field(None, description="Hires fix: the second pass's width instead of a scale (a multiple of 8)."),
        hires_height: Optional[int] = Field(None, description="Hires fix: the second pass's height instead of a scale (a multiple of 8)."),
        hires_upscaler: Optional[str] = Field(None, description="Hires fix: Latent (SD models), Lanczos, Nearest, None or a converted model upscaler's name [Latent]."),
        hires_steps: Optional[int] = Field(None, description="Hires fix: the second pass's steps [0: steps]."),
        hires_denoise: Optional[float] = Field(None, description="Hires fix: how much the second pass repaints, more than 0 and up to 1 [0.7]."),
        ctx: Context = None,
    ) -> CallToolResult:
        """Draw an image from a text prompt. Returns the PNG and the path it was written to."""
        fields = {"negative_prompt": negative_prompt, "size": _size(width, height), "steps": steps,
                  "guidance_scale": guidance_scale, "seed": seed, "scheduler": scheduler, "model": model}
        hires = dict(zip(HIRES_ARGUMENTS, (hires_scale, hires_width, hires_height, hires_upscaler, hires_steps,
                                           hires_denoise)))
        if any(value is not None for value in hires.values()):  # (generate's --hires-* flags)
            fields["hires"] = {key: value for key, value in hires.items() if value is not None}
        made = await asyncio.to_thread(plan, fields, "txt2img", prompt)
        return await _images(worker, writer, made, ctx)

    @server.tool(structured_output=False)
    async def edit_image(
        prompt: str = Field(description="What the edited image shows (FLUX.2-klein: the instruction)."),
        image: str = Field(description="The image to edit: a file's path on the server, or base64 (a data: URL too)."),
        mask: Optional[str] = Field(None, description="Inpainting: a path or base64 of a mask, white = repaint, black = keep (SD models)."),
        strength: Optional[float] = Field(None, description="How much to repaint, 0..1 [1 with a mask, else 0.75]; not used by FLUX.2-klein."),
        negative_prompt: str = Field("", description="What to steer away from."),
        width: Optional[int] = Field(None, description="Width, a multiple of 8 [the image's]."),
        height: Optional[int] = Field(None, description="Height, a multiple of 8 [the image's]."),
        steps: Optional[int] = Field(None, description="Denoising steps [the model folder's default, else 20]."),
        guidance_scale: Optional[float] = Field(None, description="Classifier-free guidance [the model folder's default, else 7.5]."),
        seed: Optional[int] = Field(None, description="The seed [random]."),
        scheduler: Optional[str] = Field(None, description="A scheduler [the model's own]."),
        model: Optional[str] = Field(None, description="A model's name from list_models [the server's model]."),
        ctx: Context = None,
    ) -> CallToolResult:
        """Edit an image: inpainting with a mask or image-to-image on Stable Diffusion models, reference-image
        editing on FLUX.2-klein (the image conditions the picture). Returns the PNG and the path it was written to."""
        size = _size(width, height)
        picture = await asyncio.to_thread(_read, "image", _image_bytes("image", image))
        repaint = None if mask is None else await asyncio.to_thread(_read, "mask", _image_bytes("mask", mask), True)
        fields = {"negative_prompt": negative_prompt, "size": size, "steps": steps, "strength": strength,
                  "guidance_scale": guidance_scale, "seed": seed, "scheduler": scheduler, "model": model}
        made = await asyncio.to_thread(plan, fields, "img2img", prompt, picture, repaint)
        return await _images(worker, writer, made, ctx)

    @server.tool(structured_output=False)
    async def list_models() -> CallToolResult:
        """The models a tool's `model` may name (converted model folders), and the one used when none is named."""
        entries = await asyncio.to_thread(lambda: (worker.registry.refresh(), worker.registry.entries())[1])
        models = [{"name": e.title, "path": str(e.path), "default": e.title == worker.selected} for e in entries]
        text = "\n".join(f"{m['name']}{' (default)' if m['default'] else ''}: {m['path']}" for m in models)
        return CallToolResult(content=[TextContent(type="text", text=text or "no models")],
                              structured_content={"models": models})

    @server.tool(structured_output=False)
    async def image_parameters(
        image: str = Field(description="A PNG's path on the server, or its base64."),
    ) -> CallToolResult:
        """The generation settings a PNG stores (A1111's `parameters` text, as sdcli and A1111 write it), parsed."""
        data = _image_bytes("image", image)
        info = await asyncio.to_thread(_parameters, data)
        text = info["parameters"] or "this PNG stores no generation parameters"
        return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=info)

    return server


def _parameters(data: bytes) -> dict:
    import struct
    import zlib

    from sdcli.imaging.image_io import read_png_text
    from sdcli.imaging.params import parse_parameters

    with tempfile.TemporaryDirectory(prefix="sdcli-mcp-") as tmp:
        path = Path(tmp) / "image.png"
        path.write_bytes(data)
        try:
            items = read_png_text(path)
        except (UsageError, ValueError, IndexError, struct.error, zlib.error):
            raise ToolError("image: is not a readable PNG image") from None
    text = items.get("parameters", "")
    prompt, negative, fields = parse_parameters(text) if text else ("", "", {})
    return {"parameters": text, "prompt": prompt, "negative_prompt": negative, "fields": fields}


def http_app(server: MCPServer, host: str | None = None, max_body: int = 64 << 20):
    """The streamable HTTP transport's Starlette app (its one route is /mcp) and its session
    manager (run it in the serving app's lifespan).  DNS-rebinding protection (Host and Origin
    checked) when the server listens on a loopback address, as the SDK does; bodies up to
    `max_body` (the server's limit, not the SDK's 4 MB: an edit's base64 image)."""
    from mcp.server.transport_security import TransportSecuritySettings

    security = None if host in ("127.0.0.1", "localhost", "::1") else TransportSecuritySettings(
        enable_dns_rebinding_protection=False)
    app = server.streamable_http_app(streamable_http_path="/mcp", transport_security=security,
                                     host=host or "0.0.0.0", max_request_body_size=max_body)
    return app, server.session_manager
