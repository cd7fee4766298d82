"""The MCP tools through the official `mcp` SDK's own client, over both transports: stdio
(`python -m sdcli mcp`, spawned by the client) and streamable HTTP (/mcp on a real `sdcli serve`
process, with --api-key: Bearer auth as on /v1).  generate_image gives `sdcli generate`'s pixels
for the same prompt, seed, steps and size (and another prompt moves them), writes the PNG with
generate's parameters, and sends a progress notification per step; a bad size is a one-line
tool error; list_models and image_parameters; edit_image with a mask gives generate's
inpainting pixels."""
from __future__ import annotations

import base64
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mcp")
pytest.importorskip("fastapi")

import anyio  # noqa: E402
import httpx  # noqa: E402
from mcp import ClientSession, StdioServerParameters, stdio_client  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402
from mcp.shared._httpx_utils import create_mcp_http_client  # noqa: E402
from PIL import Image  # noqa: E402

from tests.test_openai_api import Server, diff, pixels  # noqa: E402

KEY = "sk-mcp-key"
FOX = {"prompt": "a red fox, at dawn", "seed": 7, "steps": 2, "width": 64, "height": 64}
TOLERANCE = 2  # of 255
TOOLS = {"generate_image", "edit_image", "list_models", "image_parameters"}


@pytest.fixture(scope="module")
def models(tiny_eps, tmp_path_factory):
    root = tmp_path_factory.mktemp("mcp-models")
    shutil.copytree(tiny_eps.ov_dir, root / "tiny-a")
    return root


def generate(models: Path, out: Path, *extra: str) -> Path:
    cli = subprocess.run([sys.executable, "-m", "sdcli", "generate", "--model", str(models / "tiny-a"),
                          "--prompt", FOX["prompt"], "--seed", "7", "--steps", "2", "--width", "64", "--height", "64",
                          "--output", str(out), "--quiet", *extra], capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr
    return out


@pytest.fixture(scope="module")
def reference(models, tmp_path_factory) -> Path:
    """`sdcli generate`'s PNG for FOX."""
    return generate(models, tmp_path_factory.mktemp("mcp-cli") / "fox.png")


def image_of(result) -> bytes:
    images = [c for c in result.content if c.type == "image"]
    assert len(images) == 1 and images[0].mime_type == "image/png"
    return base64.b64decode(images[0].data)


async def exercise(session: ClientSession, reference: Path, out_dir: Path) -> dict:
    """What both transports must do alike; returns figures for the report."""
    await session.initialize()
    tools = {tool.name: tool for tool in (await session.list_tools()).tools}
    assert TOOLS <= set(tools), sorted(tools)
    assert {"prompt", "seed", "steps", "width", "height", "negative_prompt", "guidance_scale", "scheduler",
            "model"} <= set(tools["generate_image"].input_schema["properties"])

    progress: list[tuple] = []

    async def on_progress(done, total, message):
        progress.append((done, total, message))

    result = await session.call_tool("generate_image", FOX, progress_callback=on_progress)
    assert not result.is_error, result.content
    png = image_of(result)
    written = Path(result.structured_content["images"][0]["path"])
    assert written.parent == out_dir.resolve() and written.read_bytes() == png  # the file is the image returned
    total = progress[-1][1] if progress else 0  # the denoising steps (PNDM's 2 steps run 3)
    assert total >= 2 and [p[:2] for p in progress] == [(i, total) for i in range(1, int(total) + 1)], progress
    parity = diff(pixels(png), pixels(reference.read_bytes()))
    assert Image.open(written).info["parameters"] == Image.open(reference).info["parameters"]

    other = await session.call_tool("generate_image", {**FOX, "prompt": "a blue boat on a lake"})
    moved = diff(pixels(image_of(other)), pixels(png))
    assert parity <= TOLERANCE < moved, (parity, moved)

    bad = await session.call_tool("generate_image", {**FOX, "width": 63})
    assert bad.is_error and len(bad.content) == 1
    message = bad.content[0].text
    assert "\n" not in message and "width" in message and "multiple of 8" in message and "Traceback" not in message

    typed = await session.call_tool("generate_image", {**FOX, "steps": "two"})  # the SDK's own argument check
    assert typed.is_error and "\n" not in typed.content[0].text and "steps" in typed.content[0].text

    unknown = await session.call_tool("generate_image", {**FOX, "model": "nope"})
    assert unknown.is_error and "'nope' not found" in unknown.content[0].text

    listed = await session.call_tool("list_models", {})
    assert not listed.is_error
    assert [(m["name"], m["default"]) for m in listed.structured_content["models"]] == [("tiny-a", True)]

    info = await session.call_tool("image_parameters", {"image": str(written)})
    assert not info.is_error
    assert info.structured_content["prompt"] == FOX["prompt"]
    assert info.structured_content["fields"]["Seed"] == "7" and info.structured_content["fields"]["Steps"] == "2"
    by_base64 = await session.call_tool("image_parameters", {"image": base64.b64encode(png).decode()})
    assert by_base64.structured_content == info.structured_content
    not_png = await session.call_tool("image_parameters", {"image": base64.b64encode(b"not an image").decode()})
    assert not_png.is_error and "\n" not in not_png.content[0].text
    return {"parity": parity, "moved": moved, "png": png, "written": written}


def test_stdio(models, reference, tmp_path):
    out_dir = tmp_path / "images"
    params = StdioServerParameters(command=sys.executable,
                                   args=["-m", "sdcli", "mcp", "--model", str(models / "tiny-a"), "--models-dir",
                                         str(models), "--output-dir", str(out_dir)],
                                   env={"PYTHONUNBUFFERED": "1"})
    errlog = (tmp_path / "stderr.txt").open("w")

    async def main():
        async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as session:
            figures = await exercise(session, reference, out_dir)
            # edit_image: inpainting with a mask (white = repaint) equals generate's --init-image --mask
            mask = np.zeros((64, 64), np.uint8)
            mask[16:48, 16:48] = 255
            mask_path = tmp_path / "mask.png"
            Image.fromarray(mask).save(mask_path)
            edited = await session.call_tool("edit_image", {
                "prompt": "a blue boat on a lake", "image": str(figures["written"]),
                "mask": base64.b64encode(mask_path.read_bytes()).decode(), "seed": 7, "steps": 2})
            assert not edited.is_error, edited.content
            return figures, image_of(edited)

    try:
        figures, edited = anyio.run(main)
    finally:
        errlog.close()
    cli = subprocess.run([sys.executable, "-m", "sdcli", "generate", "--model", str(models / "tiny-a"),
                          "--prompt", "a blue boat on a lake", "--seed", "7", "--steps", "2",
                          "--init-image", str(figures["written"]), "--mask", str(tmp_path / "mask.png"),
                          "--strength", "1", "--output", str(tmp_path / "edit.png"), "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr
    edit_parity = diff(pixels(edited), pixels((tmp_path / "edit.png").read_bytes()))
    kept = diff(pixels(edited)[:8], pixels(figures["png"])[:8])  # outside the mask (and its blur)
    repainted = diff(pixels(edited)[24:40, 24:40], pixels(figures["png"])[24:40, 24:40])
    print(f"mcp stdio: generate_image vs generate max {figures['parity']}, another prompt moves it by "
          f"{figures['moved']}; edit_image vs generate --mask max {edit_parity}, inside the mask moved by "
          f"{repainted}, outside {kept}")
    assert edit_parity <= TOLERANCE < repainted, (edit_parity, repainted)


def test_streamable_http_on_serve(models, reference, tmp_path):
    out_dir = tmp_path / "served"
    server = Server("--model", models / "tiny-a", "--models-dir", models, "--output-dir", out_dir,
                    env={"SDCLI_API_KEY": KEY})
    try:
        assert any("/mcp" in line for line in server.lines), server.lines
        for headers in ({}, {"Authorization": "Bearer wrong"}):  # Bearer auth, as on /v1
            r = httpx.post(f"{server.url}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                           headers={**headers, "Accept": "application/json, text/event-stream"})
            assert r.status_code == 401, r.text
        assert httpx.get(f"{server.url}/sdapi/v1/sd-models").status_code == 200  # the other routes still answer

        async def main():
            client = create_mcp_http_client(headers={"Authorization": f"Bearer {KEY}"})
            async with client, streamable_http_client(f"{server.url}/mcp", http_client=client) as (read, write), \
                    ClientSession(read, write) as session:
                figures = await exercise(session, reference, out_dir)
                # a 5 MB image argument passes the transport (the SDK's own limit is 4 MB) and is
                # answered by the tool: not an image
                junk = base64.b64encode(os.urandom(5 << 20)).decode()
                big = await session.call_tool("edit_image", {"prompt": "x", "image": junk})
                assert big.is_error and "image" in big.content[0].text and "\n" not in big.content[0].text, big
                return figures

        figures = anyio.run(main)
        print(f"mcp http: generate_image vs generate max {figures['parity']}, another prompt moves it by "
              f"{figures['moved']}")
    finally:
        server.stop()
    assert server.proc.returncode == 143, "".join(server.lines)  # SIGTERM, as serve exits on it
    assert "Traceback" not in "".join(server.lines), "".join(server.lines)
