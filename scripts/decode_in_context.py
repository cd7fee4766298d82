"""The VAE decode inside a whole `generate` (issue 23/26): alone, sdcli's compiled VAE decoder
decodes as fast as openvino-genai's (scripts/vae_decode_ab.py), but in a run it took longer.
`python scripts/decode_in_context.py MODEL_DIR [STEPS] [SIZE]` runs one generate as the CLI does
(text encoder freed after encoding) and splits its decode: the wait for the decoder, the
decoder's first inference, the conversion to pixels; then decodes the same latents again
twice, then once more with the UNet released. One JSON line."""
import json
import os
import sys
import threading
import time

from sdcli.engine.engine import Engine
from sdcli.engine.request import GenerationRequest
from sdcli.imaging.image_io import to_pixels

model = sys.argv[1]
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 4
size = int(sys.argv[3]) if len(sys.argv) > 3 else 512
engine = Engine(model, keep_text_encoder=False)
rec: dict = {"steps": steps, "size": size}
captured = {}


def cpu() -> float:
    t = os.times()
    return t.user + t.system


def decode(latents, vae_kind="full"):
    vae = engine.folder.vae(vae_kind)
    t0 = time.perf_counter()
    decoder = engine.components.vae_decoder(latents.shape[2:], vae.decoder)
    rec["wait_s"] = round(time.perf_counter() - t0, 3)
    x = engine.family.decode_latents(latents, vae)
    rec["threads_at_decode"] = sorted(t.name for t in threading.enumerate())
    c0, t0 = cpu(), time.perf_counter()
    out = decoder(x)
    rec["infer1_s"] = round(time.perf_counter() - t0, 3)
    rec["infer1_cpu_s"] = round(cpu() - c0, 3)
    t0 = time.perf_counter()
    image = to_pixels(out)
    rec["pixels_s"] = round(time.perf_counter() - t0, 3)
    captured["x"], captured["decoder"] = x, decoder
    return image


engine.decode = decode
request = GenerationRequest(prompt="a photograph of an astronaut riding a horse", negative_prompt="", steps=steps,
                            guidance_scale=7.5, seed=42, width=size, height=size, scheduler="euler")
result = engine.generate(request)
rec["generate_decode_s"] = round(result.timings["decode"], 3)
rec["step_median_s"] = round(result.timings["step_median"], 3)
for i in (2, 3):
    c0, t0 = cpu(), time.perf_counter()
    captured["decoder"](captured["x"])
    rec[f"infer{i}_s"] = round(time.perf_counter() - t0, 3)
    rec[f"infer{i}_cpu_s"] = round(cpu() - c0, 3)
engine.components.release_denoiser()
t0 = time.perf_counter()
captured["decoder"](captured["x"])
rec["infer_unet_released_s"] = round(time.perf_counter() - t0, 3)
print(json.dumps(rec), flush=True)
