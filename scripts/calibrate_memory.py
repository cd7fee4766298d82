"""Measure what sdcli/engine/memory.py estimates: the peak RSS of one model component compiled
and run once at a size, in a fresh process each, against the estimate.

    python scripts/calibrate_memory.py MODEL_DIR 256,512,1024 [--precision auto|f32|bf16]

Each (component, size) runs twice: `cold` compiles it (into a fresh blob cache) and
`warm` loads the compiled blob, as every later run of sdcli does.  Prints one JSON line
per run: the process's peak RSS after the imports (`base_mb`), at the end (`peak_mb`),
the component's share (`peak - base`) and what memory.py estimates for that stage
(`estimate_mb`, without BASE; memory.py estimates the warm peak).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
from pathlib import Path


def child(model: str, component: str, size: int, precision: str, cache: str, run: str) -> None:
    import numpy as np

    from sdcli.engine.memory import BASE, compute_element_bytes, estimate
    from sdcli.engine.engine import Engine
    from sdcli.runtime.components import UNet

    engine = Engine(model, precision=precision, cache_dir=Path(cache))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    folder = engine.folder
    f = folder.vae_scale_factor
    latent = (size // f, size // f)
    if component == "unet":
        cross = folder.unet_config.get("cross_attention_dim", 768)
        unet = engine.components.unet(UNet.input_shapes(folder, 2, latent, 77))
        sample = np.random.randn(2, folder.unet_config.get("in_channels", 4), *latent).astype(np.float32)
        unet(sample, 500, np.random.randn(2, 77, cross).astype(np.float32))
    else:
        decoder = engine.components.vae_decoder(latent)
        decoder(np.random.randn(1, folder.latent_channels, *latent).astype(np.float32))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    est = estimate(folder, size, size, element_bytes=compute_element_bytes("CPU", precision, engine.runtime.core))
    stage = est.stages["denoising" if component == "unet" else "decoding"]  # without BASE
    print(json.dumps({"component": component, "size": size, "latent": latent[0], "precision": precision, "run": run,
                      "base_mb": round(base / 1e6), "peak_mb": round(peak / 1e6),
                      "component_mb": round((peak - base) / 1e6), "estimate_mb": round(stage / 1e6),
                      "estimate_with_base_mb": round((stage + BASE) / 1e6)}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("sizes")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--components", default="unet,vae_decoder")
    args = parser.parse_args()
    for component in args.components.split(","):
        for size in (int(s) for s in args.sizes.split(",")):
            with tempfile.TemporaryDirectory(prefix="sdcli-calibrate-") as cache:
                for run in ("cold", "warm"):
                    pid = os.fork()
                    if pid == 0:
                        try:
                            child(args.model, component, size, args.precision, cache, run)
                        finally:
                            sys.stdout.flush()
                            os._exit(0)
                    os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
