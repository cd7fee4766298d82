"""Issue 23's VAE decode benchmark: sdcli's compiled VAE decoder against openvino-genai's
`AutoencoderKL` on the same IR, whole processes, on this CPU.

    python scripts/bench_vae_decode.py --output-dir bench-results/local-vae-decode [--sizes 512,1024] [--rounds 3]
    python scripts/bench_vae_decode.py --tiny --output-dir /tmp/bench-vae-tiny      # the script itself, in seconds

Each run is one process of `scripts/vae_decode_ab.py VARIANT FOLDER CACHE SIZE`: load and compile
the decoder for SIZE x SIZE (static shape), then decode the same latents three times in a row.
Variants: `sdcli` (the engine's VaeDecoder: sdcli's runtime, its compiled-blob cache, its
default precision), `genai-cache` (openvino_genai.AutoencoderKL, reshape, compile with
CACHE_DIR: genai's best documented settings) and `genai` (the same without the cache: its
defaults). Both peers compile at OpenVINO's default inference precision for this CPU unless
sdcli's `auto` says otherwise (recorded per run). The random SD 1.5 architecture's VAE (the
SDXL VAE has the same decoder graph) from `sdcli bench`'s folders. Two unmeasured warm-ups of
each configuration fill its cache (sdcli writes a blob on a model's second run); then N rounds in rotated order (sdcli.bench.rounds).
Reported per configuration, medians: decode1_s (the first decode after compiling: OpenVINO's
CPU plugin does one-time work there, and a `generate` decodes once), decode_warm_s (the median
of the second and third), load_s (read + compile, cache warm), the process's wall and peak RSS.
The target (issue 23): sdcli's decode <= 1.00x genai's, on medians.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
VARIANTS = ("sdcli", "genai-cache", "genai")
COLUMNS = ["size", "variant", "runs", "decode1_s", "decode_warm_s", "load_s", "import_s", "wall_s", "peak_rss_mb",
           "precision"]


def command(config: str, ov_dir: Path, work: Path) -> tuple[list[str], dict]:
    size, variant = config.split("/")
    from sdcli.bench.peers import tree_env

    env = tree_env(ROOT)
    cache = work / "vae-cache" / f"{variant}-{size}"
    cache.mkdir(parents=True, exist_ok=True)
    return [sys.executable, str(ROOT / "scripts" / "vae_decode_ab.py"), variant, str(ov_dir), str(cache), size], env


def parse(stdout: str) -> dict:
    from sdcli.bench.peers import median
    from sdcli.bench.rounds import last_json

    rec = last_json(stdout)
    return {"decode1_s": rec["decode1_s"], "decode_warm_s": median([rec["decode2_s"], rec["decode3_s"]]),
            "load_s": rec["load_s"], "import_s": rec["import_s"], "inner_rss_mb": rec["peak_rss_mb"],
            "precision": rec.get("precision")}


def ratios(rows: list[dict]) -> list[str]:
    """sdcli's medians over each genai row's, per size."""
    out = []
    for size in dict.fromkeys(r["size"] for r in rows):
        mine = {r["variant"]: r for r in rows if r["size"] == size and r.get("runs")}
        if "sdcli" not in mine:
            continue
        for peer in ("genai-cache", "genai"):
            if peer in mine:
                parts = [f"{k} {mine['sdcli'][k] / mine[peer][k]:.2f}x" for k in ("decode1_s", "decode_warm_s", "load_s")
                         if mine[peer].get(k)]
                out.append(f"- {size}², sdcli / {peer}: " + ", ".join(parts))
    return out


def markdown(report: dict) -> str:
    from sdcli.bench.rounds import median_rows, rounds_phrase, table, warm_up_phrase

    m = report["machine"]
    rows = median_rows(report["runs"], ["config"], ["decode1_s", "decode_warm_s", "load_s", "import_s", "wall_s",
                                                     "peak_rss_mb"])
    for row in rows:
        row["size"], row["variant"] = row["config"].split("/")
        row["precision"] = next((r.get("precision") for r in report["runs"]
                                 if r["config"] == row["config"] and r.get("precision")), None)
    lines = [f"Machine: {m.get('cpu')}, {m.get('cores')} cores, {m.get('memory_gb')} GB; OpenVINO {m.get('openvino')}; "
             f"{m.get('date')}. {report['arch']} VAE decoder ({report['weight_format']} folder), one process per run "
             "(`scripts/vae_decode_ab.py`): load + compile for a static size, three decodes of the same latents. "
             f"{rounds_phrase(report['runs'], ['config']).capitalize()} after {warm_up_phrase(report)} each (caches warm); load "
             f"average {report['load_average_start'][0]:.1f} at the start, "
             f"{report.get('load_average_end', [0])[0]:.1f} at the end. decode1: the first decode after compiling; "
             "decode_warm: the median of the next two.", ""]
    lines += table(rows, COLUMNS)
    lines += ["", "Ratios of the medians (issue 23's target: decode <= 1.00x genai's):", *ratios(rows)]
    errors = [f"- {row['config']}: {row['error']}" for row in rows if row.get("error")]
    if errors:
        lines += ["", "Failed:", *errors]
    return "\n".join(lines) + "\n"


def main() -> None:
    from sdcli.bench.peers import ensure_models, machine_info
    from sdcli.bench.rounds import appended_runs, bench_parser, made_dirs, measure_rounds, rendered_only, save_report
    from sdcli.runtime.core import default_cache_dir

    parser = bench_parser("vae-decode", ROOT, rounds=3, workdir=default_cache_dir().parent / "bench",
                          description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="512,1024")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--weight-format", default="fp16")
    parser.add_argument("--tiny", action="store_true", help="the tiny test model at 64 and 128: checks the script")
    args = parser.parse_args()
    if rendered_only(args, markdown):
        return
    work, out_dir = made_dirs(args)
    arch = "tiny" if args.tiny else "sd15"
    sizes = ["64", "128"] if args.tiny else args.sizes.split(",")
    _, ov_dir = ensure_models(work, args.weight_format, print, arch)
    report = {"machine": machine_info(), "arch": arch, "weight_format": args.weight_format, "rounds": args.rounds,
              "folder": str(ov_dir), "runs": appended_runs(args), "load_average_start": os.getloadavg()}
    for size in sizes:
        names = [f"{size}/{variant}" for variant in args.variants.split(",")]
        measure_rounds(report, names, lambda config: command(config, ov_dir, work), args.rounds, parse=parse,
                       save=lambda: save_report(out_dir, report))
    report["load_average_end"] = os.getloadavg()
    save_report(out_dir, report, markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
