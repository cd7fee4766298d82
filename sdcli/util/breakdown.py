"""Where a whole `sdcli generate` process spends its time, for `--json` and `sdcli bench`.

The stages partition the process's life up to the moment its JSON line is written (its age
then, `total`): each is main-thread time, so they add up to `total` exactly (`other` is the
remainder: argument checks, reading the folder, the latents, ...).  What a resident process
(`sdcli serve`) would not pay again is process_start + imports + model_load (+ the exit, which
the benchmark measures from outside as its wall time less `total`).

- process_start: from the process's start (the kernel's record of it) to sdcli's first line:
  the interpreter's own start-up;
- imports: from there to the command's engine being imported (typer, numpy, OpenVINO, ...);
- model_load: the time the main thread waited for components still compiling or importing
  their cached blobs (they load on a thread of their own, the UNet while the prompt is
  encoded, so only what the main thread waits for counts here; `model_load_total`, beside the
  stages, is all of the loading);
- text_encoder, unet (every step's UNet calls), steps_other (the denoising loop less the UNet:
  the scheduler, guidance), decode: the work, less any wait for loading (a ControlNet still
  loading is waited for inside the first step's UNet call: `load_wait_denoise`, left out of unet);
- png_write: writing the PNG.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

STAGES = ("process_start", "imports", "model_load", "text_encoder", "unet", "steps_other", "decode", "png_write",
          "other")


def process_age() -> float | None:
    """Seconds since this process started (from /proc: clock ticks, 10 ms), or None where
    /proc does not tell."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def age_at(perf_counter_value: float) -> float | None:
    """The process's age at an earlier time.perf_counter() reading."""
    age = process_age()
    return None if age is None else max(0.0, age - (time.perf_counter() - perf_counter_value))


def generate_breakdown(timings: dict, process_start: float | None, imports: float, png_write: float,
                       total: float, model_load_total: float = 0.0) -> dict:
    """The stages of one `sdcli generate` image (see the module's docstring) from the engine's
    `timings` (encode_prompt, unet, denoise, decode and their load_wait_*), the process's age at
    sdcli's first line (`process_start`), the import time, the PNG's write time and the process's
    age now (`total`)."""
    encode = timings.get("encode_prompt", 0.0)
    stages = {
        "process_start": process_start or 0.0,
        "imports": imports,
        "model_load": timings.get("load_wait", 0.0),
        "text_encoder": max(0.0, encode - timings.get("load_wait_encode", 0.0)) if encode else 0.0,
        "unet": max(0.0, timings.get("unet", 0.0) - timings.get("load_wait_denoise", 0.0)),
        "steps_other": max(0.0, timings.get("denoise", 0.0) - timings.get("unet", 0.0)),
        "decode": max(0.0, timings.get("decode", 0.0) - timings.get("load_wait_decode", 0.0)),
        "png_write": png_write,
    }
    stages["other"] = total - sum(stages.values())
    out = {k: round(v, 4) for k, v in stages.items()}
    out.update(total=round(total, 4), model_load_total=round(model_load_total, 4))
    return out


def with_exit(breakdown: dict, wall: float) -> dict:
    """`breakdown` with the time after its JSON line to the process's end, from the wall time
    measured outside (`exit`: freeing, writing the compiled-model cache, the interpreter's exit)."""
    if not breakdown or breakdown.get("total") is None:
        return dict(breakdown or {})
    return {**breakdown, "exit": round(wall - breakdown["total"], 4), "wall": round(wall, 4)}
