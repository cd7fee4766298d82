"""First-run compile of a UNet: the time and peak RSS of each way to get a compiled model,
each in its own process: `python scripts/first_run_variants.py VARIANT MODEL_DIR CACHE_DIR [SIZE]`.
Run a cache variant twice on one CACHE_DIR for its cold and warm figures (issue 13)."""
import json, os, resource, sys, time, tempfile, shutil
from pathlib import Path
variant, folder = sys.argv[1], Path(sys.argv[2])
cache = Path(sys.argv[3])
import openvino as ov
core = ov.Core()
xml = folder / "unet" / "openvino_model.xml"
lat = int(sys.argv[4]) // 8 if len(sys.argv) > 4 else 64
shapes = {"sample": [2, 4, lat, lat], "timestep": [2], "encoder_hidden_states": [2, 77, 768]}
cfg = {"PERFORMANCE_HINT": "LATENCY"}
t0 = time.perf_counter()
rec = {}
if variant == "sdcli":  # today's Runtime.load with its blob cache
    from sdcli.runtime.core import Runtime
    from sdcli.runtime.timestep import float_timestep
    rt = Runtime("CPU", "auto", cache)
    compiled, _ = rt.load("unet", xml, shapes, prepare=float_timestep)
elif variant == "sdcli-noblob":
    from sdcli.runtime.core import Runtime
    from sdcli.runtime.timestep import float_timestep
    rt = Runtime("CPU", "auto", None)
    compiled, _ = rt.load("unet", xml, shapes, prepare=float_timestep)
elif variant == "sdcli-nodrop":  # the same without dropping the mapped pages while OpenVINO copies
    import contextlib
    from sdcli.runtime import core as rcore
    from sdcli.runtime.timestep import float_timestep
    rcore.MappedFile.dropping_pages = lambda self, period=0.2: contextlib.nullcontext(self)
    rt = rcore.Runtime("CPU", "auto", None)
    compiled, _ = rt.load("unet", xml, shapes, prepare=float_timestep)
elif variant == "plain":  # read_model from the path, reshape, compile: what genai does without a cache
    model = core.read_model(xml)
    model.reshape(shapes)
    compiled = core.compile_model(model, "CPU", cfg)
elif variant == "plain-cachedir":  # the same with OpenVINO's CACHE_DIR (hashes the in-memory model)
    core.set_property({"CACHE_DIR": str(cache)})
    model = core.read_model(xml)
    model.reshape(shapes)
    compiled = core.compile_model(model, "CPU", cfg)
elif variant == "plain-cachedir-size":
    core.set_property({"CACHE_DIR": str(cache), "CACHE_MODE": "OPTIMIZE_SIZE"})
    model = core.read_model(xml)
    model.reshape(shapes)
    compiled = core.compile_model(model, "CPU", cfg)
elif variant == "path-cachedir":  # compile_model(path) with CACHE_DIR: keyed by the file, dynamic shapes
    core.set_property({"CACHE_DIR": str(cache)})
    compiled = core.compile_model(str(xml), "CPU", cfg)
elif variant == "path-cachedir-size":
    core.set_property({"CACHE_DIR": str(cache), "CACHE_MODE": "OPTIMIZE_SIZE"})
    compiled = core.compile_model(str(xml), "CPU", cfg)
rec["compile_s"] = round(time.perf_counter() - t0, 2)
req = compiled.create_infer_request()
import numpy as np
inputs = {"sample": np.random.randn(2, 4, lat, lat).astype(np.float32), "timestep": np.array([500, 500], dtype=np.float32 if compiled.input("timestep").get_element_type() == ov.Type.f32 else np.int64),
          "encoder_hidden_states": np.random.randn(2, 77, 768).astype(np.float32)}
t0 = time.perf_counter(); req.infer(inputs); rec["first_infer_s"] = round(time.perf_counter() - t0, 2)
t0 = time.perf_counter(); req.infer(inputs); rec["infer_s"] = round(time.perf_counter() - t0, 2)
rec["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
print(json.dumps({"variant": variant, **rec}), flush=True)
