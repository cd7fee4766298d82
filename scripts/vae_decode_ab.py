"""Why is sdcli's VAE decode slower than openvino-genai's (issue 23/26)? One way of getting a
compiled VAE decoder per process: `python scripts/vae_decode_ab.py VARIANT MODEL_DIR CACHE_DIR [SIZE]`
prints one JSON line: the load time, then three decodes of the same latents in a row (the first
one apart: OpenVINO's CPU plugin does work on a compiled model's first inference).

Variants: sdcli (Runtime.load with its blob cache: run twice on one CACHE_DIR for the cold
and warm figures), sdcli-noblob, sdcli-nodrop (no page dropping), sdcli-f32, plain (read_model,
reshape, compile), plain-nolatency (no PERFORMANCE_HINT), genai (openvino_genai.AutoencoderKL,
reshape, compile), genai-cache (the same with CACHE_DIR)."""
import json
import resource
import sys
import time
from pathlib import Path

variant, folder, cache = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
size = int(sys.argv[4]) if len(sys.argv) > 4 else 512
t_start = time.perf_counter()
import numpy as np  # noqa: E402
import openvino as ov  # noqa: E402

lat = size // 8
latents = np.random.default_rng(0).standard_normal((1, 4, lat, lat)).astype(np.float32)
rec = {"variant": variant, "size": size}
t0 = time.perf_counter()
if variant.startswith("sdcli"):
    import contextlib

    from sdcli.model.folder import ModelFolder
    from sdcli.runtime import core as rcore
    from sdcli.runtime.components import VaeDecoder

    if variant == "sdcli-nodrop":
        rcore.MappedFile.dropping_pages = lambda self, period=0.2: contextlib.nullcontext(self)
    precision = "f32" if variant == "sdcli-f32" else "auto"
    runtime = rcore.Runtime("CPU", precision, None if variant == "sdcli-noblob" else cache)
    decoder = VaeDecoder(runtime, ModelFolder.open(folder), (lat, lat))
    decode = decoder
elif variant.startswith("plain"):
    core = ov.Core()
    model = core.read_model(folder / "vae_decoder" / "openvino_model.xml")
    model.reshape({model.input(0).get_any_name(): [1, 4, lat, lat]})
    config = {} if variant == "plain-nolatency" else {"PERFORMANCE_HINT": "LATENCY"}
    compiled = core.compile_model(model, "CPU", config)
    request = compiled.create_infer_request()

    def decode(x):
        request.infer({0: x})
        return request.get_output_tensor(0).data.copy()
elif variant.startswith("genai"):
    import openvino_genai as genai

    vae = genai.AutoencoderKL(str(folder / "vae_decoder"))
    vae.reshape(1, size, size)
    vae.compile("CPU", **({"CACHE_DIR": str(cache)} if variant == "genai-cache" else {}))

    def decode(x):
        return np.array(vae.decode(ov.Tensor(x)).data, copy=True)
else:
    sys.exit(f"unknown variant {variant}")
from sdcli.runtime.core import effective_precision  # noqa: E402

rec["precision"] = effective_precision(ov.Core(), "CPU", "f32" if variant == "sdcli-f32" else "auto")
rec["import_s"] = round(t0 - t_start, 3)
rec["load_s"] = round(time.perf_counter() - t0, 3)
for i in range(3):
    t0 = time.perf_counter()
    decode(latents)
    rec[f"decode{i + 1}_s"] = round(time.perf_counter() - t0, 3)
rec["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
print(json.dumps(rec), flush=True)
