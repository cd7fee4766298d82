"""Issue 23's upscaler benchmark: `sdcli upscale` (OpenVINO) against spandrel's torch model run
through the same A1111 tiling, whole processes, on this CPU.

    python scripts/bench_upscale.py --output-dir bench-results/local-upscale [--rounds 3] [--size 512]

Architectures at their published sizes with random weights (the cost does not depend on the
values): RRDBNet as 4x-UltraSharp / RealESRGAN x4plus (64 features, 23 blocks) and Real-ESRGAN
Compact as realesr-general-x4v3 (64 features, 32 convolutions). Each is saved as a
.safetensors checkpoint and converted once by `sdcli convert`. Every run upscales the same
SIZE x SIZE picture 4x with A1111's defaults (tiles of 192 pixels overlapping by 8, BGR):
`sdcli upscale` at f32 (the torch peer's precision) and at its default precision (auto: bf16
where the CPU has it), and a torch process doing the same tiling through sdcli's grid code
with spandrel's model in f32 (torch's own thread count), and (peer torch-bf16, asked for with
--peers) the same with the model and its input in bfloat16. Rounds rotate the peers' order; the
first two runs of each peer are unmeasured warm-ups (the compiled-model cache filled: sdcli
writes a blob on a model's second run; the files in the page cache). bench.json keeps every run; bench.md the medians.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ARCHS = {  # name: spandrel constructor arguments at the published size
    "rrdbnet": ("ESRGAN", dict(in_nc=3, out_nc=3, num_filters=64, num_blocks=23, scale=4)),
    "compact": ("Compact", dict(num_in_ch=3, num_out_ch=3, num_feat=64, num_conv=32, upscale=4)),
}
TILE, OVERLAP, SCALE = 192, 8, 4

TORCH_PEER = r"""
import sys, time, json
t0 = time.perf_counter()
import numpy as np, torch
from PIL import Image
from sdcli.convert.spandrel_import import import_spandrel
import_spandrel()
import spandrel
from sdcli.engine import upscale as up
checkpoint, image_path, out_path, tile, overlap, scale, dtype = sys.argv[1:8]
dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[dtype]
model = spandrel.ModelLoader().load_from_file(checkpoint).model.eval().to(dtype)
image = np.asarray(Image.open(image_path).convert("RGB"))
t1 = time.perf_counter()

class TorchUpscaler:  # A1111's upscale_pil_patch: BGR in 0..1, clamped, rounded
    def __call__(self, piece):
        x = np.ascontiguousarray(np.asarray(piece.convert("RGB"))[:, :, ::-1].transpose(2, 0, 1)) / 255
        with torch.no_grad():
            y = model(torch.from_numpy(x).unsqueeze(0).to(dtype))[0].float().clamp(0, 1).numpy()
        arr = (255.0 * np.moveaxis(y, 0, 2)).round().astype(np.uint8)[:, :, ::-1]
        return Image.fromarray(np.ascontiguousarray(arr), "RGB")

out = up.upscale(image, TorchUpscaler(), float(scale), tile=int(tile), overlap=int(overlap))
t2 = time.perf_counter()
Image.fromarray(out).save(out_path)
print(json.dumps({"load_s": t1 - t0, "upscale_s": t2 - t1, "threads": torch.get_num_threads()}))
"""


def build_checkpoints(work: Path) -> dict[str, Path]:
    import torch
    from safetensors.torch import save_file

    from sdcli.convert.spandrel_import import import_spandrel

    import_spandrel()
    import spandrel.architectures.Compact as compact
    import spandrel.architectures.ESRGAN as esrgan

    made = {}
    for name, (cls, kwargs) in ARCHS.items():
        path = work / f"random-{name}-x4.safetensors"
        if not path.exists():
            torch.manual_seed(0)
            net = {"ESRGAN": esrgan.ESRGAN, "Compact": compact.Compact}[cls](**kwargs).eval()
            save_file({k: v.detach().contiguous().clone() for k, v in net.state_dict().items()}, str(path))
        made[name] = path
    return made


def convert(checkpoints: dict[str, Path], upscaler_dir: Path) -> dict[str, str]:
    names = {}
    for name, path in checkpoints.items():
        names[name] = path.stem
        if not (upscaler_dir / path.stem / "openvino_model.xml").is_file():
            subprocess.run([sys.executable, "-m", "sdcli", "convert", str(path), "--upscaler-dir", str(upscaler_dir),
                            "--quiet"], check=True, cwd=ROOT)
    return names


def picture(path: Path, size: int) -> None:
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:size, 0:size] / size
    rgb = np.stack([np.sin(7 * x + 3 * y), np.cos(5 * y - 2 * x), np.sin(11 * x * y)], -1)
    rgb += np.random.default_rng(0).normal(0, 0.1, rgb.shape)
    Image.fromarray(((rgb * 0.5 + 0.5).clip(0, 1) * 255).astype(np.uint8)).save(path)


def commands(peer: str, arch: str, names, checkpoints, image: Path, out: Path, upscaler_dir: Path,
             cache: Path) -> tuple[list[str], dict]:
    from sdcli.bench.peers import tree_env

    env = tree_env(ROOT)
    if peer in ("torch", "torch-bf16"):
        return [sys.executable, "-c", TORCH_PEER, str(checkpoints[arch]), str(image), str(out), str(TILE),
                str(OVERLAP), str(SCALE), "bf16" if peer == "torch-bf16" else "f32"], env
    precision = "f32" if peer == "sdcli-f32" else "auto"
    env["SDCLI_CACHE_DIR"] = str(cache)
    return [sys.executable, "-m", "sdcli", "upscale", str(image), "--upscaler", names[arch], "--scale", str(SCALE),
            "--tile", str(TILE), "--tile-overlap", str(OVERLAP), "--upscaler-dir", str(upscaler_dir),
            "--precision", precision, "--output", str(out), "--quiet", "--json"], env


def main() -> None:
    from sdcli.bench.peers import machine_info
    from sdcli.bench.rounds import appended_runs, bench_parser, made_dirs, measure_rounds, rendered_only, save_report

    parser = bench_parser("upscale", ROOT, rounds=3)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--archs", default="compact,rrdbnet")
    parser.add_argument("--peers", default="sdcli-f32,sdcli,torch")
    args = parser.parse_args()
    if rendered_only(args, markdown):
        return
    work, out_dir = made_dirs(args)
    checkpoints = build_checkpoints(work)
    upscaler_dir = work / "ESRGAN"
    names = convert(checkpoints, upscaler_dir)
    image = work / f"picture-{args.size}.png"
    picture(image, args.size)
    peers = args.peers.split(",")
    report = {"machine": machine_info(), "size": args.size, "scale": SCALE, "tile": TILE, "overlap": OVERLAP,
              "rounds": args.rounds, "peers": peers, "archs": {}, "runs": appended_runs(args),
              "load_average_start": os.getloadavg()}
    for arch in args.archs.split(","):
        def command(peer: str, arch=arch) -> tuple[list[str], dict]:
            return commands(peer, arch, names, checkpoints, image, work / f"{arch}-{peer}.png", upscaler_dir,
                            work / "cache")

        measure_rounds(report, peers, command, args.rounds, key="peer", fields={"arch": arch},
                       save=lambda: save_report(out_dir, report))
    pictures = {(r["arch"], r["peer"]): work / f"{r['arch']}-{r['peer']}.png" for r in report["runs"] if r["rc"] == 0}
    agree = {}
    import numpy as np
    from PIL import Image
    for arch in args.archs.split(","):
        if (arch, "torch") in pictures and (arch, "sdcli-f32") in pictures:
            a = np.asarray(Image.open(pictures[(arch, "torch")])).astype(int)
            b = np.asarray(Image.open(pictures[(arch, "sdcli-f32")])).astype(int)
            agree[arch] = {"max": int(np.abs(a - b).max()), "mean": round(float(np.abs(a - b).mean()), 4)}
    report["f32_vs_torch_pixels"] = agree
    report["load_average_end"] = os.getloadavg()
    save_report(out_dir, report, markdown(report))
    print(markdown(report))


def markdown(report: dict) -> str:
    from sdcli.bench.rounds import median_rows, rounds_phrase, table, warm_up_phrase

    m = report["machine"]
    lines = [f"Machine: {m.get('cpu')}, {m.get('cores')} cores; {report['size']}x{report['size']} picture upscaled "
             f"{report['scale']}x, A1111's tiling (tile {report['tile']}, overlap {report['overlap']}, BGR); whole "
             f"processes, {rounds_phrase(report['runs'], ['arch', 'peer'])} after {warm_up_phrase(report)} per peer; load "
             f"average {report['load_average_start'][0]:.1f} at the start, {report.get('load_average_end', [0])[0]:.1f} "
             "at the end. sdcli-f32: `sdcli upscale --precision f32`; sdcli: its default precision; torch: "
             "spandrel's model in f32 through the same tiling code; torch-bf16: the same in bfloat16 "
             "(wall_vs_torch_bf16: sdcli at its default precision against it).", ""]
    rows = median_rows(report["runs"], ["arch", "peer"], ["wall_s", "peak_rss_mb"])
    for row in rows:
        torch = next((r for r in rows if r["arch"] == row["arch"] and r["peer"] == "torch" and r["runs"]), None)
        if torch and row["peer"] != "torch" and row["runs"]:
            row["wall_vs_torch"] = round(row["wall_s"] / torch["wall_s"], 3)
            row["rss_vs_torch"] = round(row["peak_rss_mb"] / torch["peak_rss_mb"], 3)
        half = next((r for r in rows if r["arch"] == row["arch"] and r["peer"] == "torch-bf16" and r["runs"]), None)
        if half and row["peer"] == "sdcli" and row["runs"]:
            row["wall_vs_torch_bf16"] = round(row["wall_s"] / half["wall_s"], 3)
    lines += table(rows, ["arch", "peer", "runs", "wall_s", "peak_rss_mb", "wall_vs_torch", "rss_vs_torch",
                          "wall_vs_torch_bf16"])
    if report.get("f32_vs_torch_pixels"):
        lines += ["", "sdcli-f32's picture against torch's: " + ", ".join(
            f"{a} max {v['max']} mean {v['mean']} of 255" for a, v in report["f32_vs_torch_pixels"].items())]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
