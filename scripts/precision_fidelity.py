"""How far bf16 (and f16 weights) take a run from the f32 result: the final latents' deviation
and the pixels', on one converted folder.

    python scripts/precision_fidelity.py MODEL_DIR [--steps 20] [--size 512]

Prints one JSON line: for each precision, the latents' max abs and relative (L2) deviation
from f32 after the last step, and the decoded pixels' max and mean difference (of 255).
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from sdcli.engine.engine import Engine
from sdcli.engine.request import GenerationRequest


def run(model: str, precision: str, request: GenerationRequest) -> tuple[np.ndarray, np.ndarray]:
    last = {}

    def keep(info):
        last["latents"] = np.array(info.latents)

    result = Engine(model, precision=precision, cache_dir=None).generate(request, keep)
    return last["latents"], result.image.astype(np.int16)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--precisions", default="bf16")
    args = parser.parse_args()
    request = GenerationRequest(prompt="a photograph of an astronaut riding a horse on the moon", steps=args.steps,
                                seed=42, width=args.size, height=args.size, scheduler="euler")
    ref_latents, ref_image = run(args.model, "f32", request)
    report = {"model": args.model, "steps": args.steps, "size": args.size}
    for precision in args.precisions.split(","):
        latents, image = run(args.model, precision, request)
        d = np.abs(latents - ref_latents)
        report[precision] = {
            "latents_max_abs": round(float(d.max()), 5),
            "latents_relative_l2": round(float(np.linalg.norm(latents - ref_latents) / np.linalg.norm(ref_latents)), 5),
            "latents_scale": round(float(np.abs(ref_latents).mean()), 5),
            "pixels_max": int(np.abs(image - ref_image).max()),
            "pixels_mean": round(float(np.abs(image - ref_image).mean()), 3),
        }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
