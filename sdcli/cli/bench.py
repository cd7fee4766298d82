"""`sdcli bench` and `sdcli bench-features`: whole-process benchmarks against the peers."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from sdcli.cli.app import app, positive_multiple_of_8, user_errors
from sdcli.util.errors import UsageError


@app.command()
def bench(
    steps: str = typer.Option("4,20", "--steps", help="Comma-separated step counts."),
    rounds: int = typer.Option(3, "--rounds", min=1, help="Rounds of every peer and step count, the peers' order rotated each round."),
    peers: str = typer.Option("sdcli,genai,optimum", "--peers", help="Which of sdcli, genai, optimum (optimum-intel), diffusers to run."),
    modes: str = typer.Option("cold,warm", "--modes", help="cold (empty caches every run), warm (caches filled first), or both."),
    optimum_python: Optional[str] = typer.Option(None, "--optimum-python", help="The python of a virtualenv with optimum-intel (its pins clash with sdcli's) [default: this python, if it has optimum-intel]."),
    size: int = typer.Option(512, "--size", callback=positive_multiple_of_8, help="Image width and height."),
    precision: str = typer.Option("auto", "--precision", help="auto, f32, bf16 (diffusers: bf16 autocast for auto)."),
    weight_format: str = typer.Option("fp16", "--weight-format", help="Weight format of the converted folder."),
    workdir: Optional[Path] = typer.Option(None, "--workdir", help="Where the random model is built and kept [default: ~/.cache/sdcli/bench]."),
    output_dir: Path = typer.Option(Path("bench-results"), "--output-dir", help="Where bench.json and bench.md go."),
    sdcli_arg: list[str] = typer.Option([], "--sdcli-arg", help="Extra argument for `sdcli generate` (repeatable)."),
    guidance_scale: float = typer.Option(7.5, "--guidance-scale", min=0.0, max=100.0, help="Every peer's guidance scale (0: a Turbo-style run without guidance)."),
    tiny_vae: bool = typer.Option(False, "--tiny-vae", help="Decode with the folder's TAESD (vae_decoder_tiny/): sdcli --vae tiny; optimum-intel with its VAE decoder model swapped for it, as FastSD CPU does; genai has none."),
    arch: str = typer.Option("sd15", "--arch", help="sd15, sdxl or sd-turbo (the real cost, random weights; sd-turbo's folder carries its defaults: 1 step, no guidance, Euler with trailing timesteps), or tiny / tiny-sdxl / tiny-sd-turbo (a quick check of the benchmark itself)."),
    readme: Optional[Path] = typer.Option(None, "--readme", help="Also rewrite this README's bench table (between <!-- bench:NAME:start/end --> markers)."),
    readme_block: str = typer.Option("local", "--readme-block", help="NAME of the README block to rewrite."),
    no_run: bool = typer.Option(False, "--no-run", help="Run nothing; render OUTPUT_DIR/bench.json (with --readme)."),
):
    """Benchmark sdcli against openvino-genai, optimum-intel and diffusers on an SD 1.5-size random model."""
    with user_errors("interrupted"):
        from sdcli.bench.peers import MODES, PEERS, run_bench, update_readme
        from sdcli.runtime.core import default_cache_dir

        if no_run:
            if readme is None:
                raise UsageError("--no-run only makes sense with --readme")
            update_readme(readme, output_dir / "bench.json", readme_block)
            return

        try:
            step_list = [int(s) for s in steps.split(",") if s.strip()]
        except ValueError:
            raise UsageError(f"--steps takes comma-separated numbers such as 4,20, got {steps!r}") from None
        peer_list = [p.strip() for p in peers.split(",") if p.strip()]
        bad = [p for p in peer_list if p not in PEERS]
        if bad or not peer_list:
            raise UsageError(f"--peers takes {', '.join(PEERS)}; got {peers!r}")
        if not step_list or min(step_list) < 1:
            raise UsageError("--steps needs positive step counts, e.g. 4,20")
        from sdcli.bench.peers import ARCHS

        if arch not in ARCHS:
            raise UsageError(f"--arch takes {', '.join(ARCHS)}, got {arch!r}")
        from sdcli.bench.peers import TAESD_FLAGS

        if tiny_vae and arch not in TAESD_FLAGS:
            raise UsageError(f"--tiny-vae: no random tiny autoencoder fits --arch {arch}; take {', '.join(TAESD_FLAGS)}")
        mode_list = tuple(m.strip() for m in modes.split(",") if m.strip())
        if not mode_list or any(m not in MODES for m in mode_list):
            raise UsageError(f"--modes takes {', '.join(MODES)}; got {modes!r}")
        if tiny_vae and ("genai" in peer_list or "diffusers" in peer_list):
            raise UsageError("--tiny-vae: openvino-genai and the diffusers peer have no tiny VAE; run --peers sdcli,optimum")
        if "optimum" in peer_list and optimum_python is None:
            import importlib.util

            if importlib.util.find_spec("optimum") is None:
                raise UsageError("--peers optimum needs optimum-intel: pass --optimum-python with the python of a "
                                 "virtualenv that has it (pip install \"optimum-intel[openvino,diffusers]\")")
        work = workdir or default_cache_dir().parent / "bench"
        run_bench(work, output_dir, step_list, rounds, peer_list, size, precision, weight_format, list(sdcli_arg),
                  log=lambda s: print(s, file=sys.stderr, flush=True), arch=arch, modes=mode_list,
                  optimum_python=optimum_python, guidance=guidance_scale, tiny_vae=tiny_vae)
        print((output_dir / "bench.md").read_text())
        if readme is not None:
            update_readme(readme, output_dir / "bench.json", readme_block)


@app.command("bench-features")
def bench_features(
    cases: str = typer.Option(",".join(("deepcache", "tiny_vae", "combo", "lcm", "quantize", "throughput")), "--cases", help="Comma-separated: deepcache, tiny_vae, combo, lcm, quantize, throughput."),
    rounds: int = typer.Option(3, "--rounds", min=1, help="Interleaved measured rounds (after one warm-up run of each configuration)."),
    size: int = typer.Option(512, "--size", callback=positive_multiple_of_8, help="Image width and height."),
    arch: str = typer.Option("sd15", "--arch", help="sd15 (the real cost) or tiny (a quick check of the benchmark itself)."),
    batch_images: int = typer.Option(4, "--batch-images", min=2, max=8, help="throughput: prompts in the batch."),
    batch_steps: int = typer.Option(8, "--batch-steps", min=1, help="throughput: steps per image."),
    workdir: Optional[Path] = typer.Option(None, "--workdir", help="Where the random models are built and kept [default: ~/.cache/sdcli/bench]."),
    output_dir: Path = typer.Option(Path("bench-results"), "--output-dir", help="Where features.json and features.md go."),
    readme: Optional[Path] = typer.Option(None, "--readme", help="Also rewrite this README's block (between <!-- bench:NAME:start/end --> markers)."),
    readme_block: str = typer.Option("features-local", "--readme-block", help="NAME of the README block to rewrite."),
    no_run: bool = typer.Option(False, "--no-run", help="Run nothing; render OUTPUT_DIR/features.json (with --readme)."),
    warm_up: bool = typer.Option(True, "--warm-up/--no-warm-up", help="Run each configuration once unmeasured first (--no-warm-up: the compiled-model cache is known to be warm)."),
):
    """Benchmark the opt-in speed-ups (DeepCache, tiny VAE, LCM, quantization, batch throughput)."""
    with user_errors("interrupted"):
        from sdcli.bench.features import CASES, run_features, update_readme
        from sdcli.runtime.core import default_cache_dir

        if no_run:
            if readme is None:
                raise UsageError("--no-run only makes sense with --readme")
            update_readme(readme, output_dir / "features.json", readme_block)
            return

        chosen = [c.strip() for c in cases.split(",") if c.strip()]
        bad = [c for c in chosen if c not in CASES]
        if bad or not chosen:
            raise UsageError(f"--cases takes {', '.join(CASES)}; got {cases!r}")
        if arch not in ("sd15", "tiny"):
            raise UsageError(f"--arch takes sd15 or tiny, got {arch!r}")
        work = workdir or default_cache_dir().parent / "bench"
        run_features(work, output_dir, chosen, rounds, size, arch, batch_images, batch_steps,
                     log=lambda s: print(s, file=sys.stderr, flush=True), warm_up=warm_up)
        print((output_dir / "features.md").read_text())
        if readme is not None:
            update_readme(readme, output_dir / "features.json", readme_block)
