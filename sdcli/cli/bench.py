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
    steps: Optional[str] = typer.Option(None, "--steps", help="Comma-separated step counts [default: 4,20; a transformer arch: its folder's own (klein 4, Z-Image-Turbo 9)]."),
    rounds: int = typer.Option(3, "--rounds", min=1, help="Rounds of every peer and step count, the peers' order rotated each round."),
    peers: Optional[str] = typer.Option(None, "--peers", help="Which of sdcli, genai, optimum (optimum-intel), diffusers to run [default: sdcli,genai,optimum]; a transformer arch: sdcli, genai, genai-defaults (no reshape, no CACHE_DIR), optimum, sdcli-low-memory."),
    modes: str = typer.Option("cold,warm", "--modes", help="cold (empty caches every run), warm (caches filled first), or both."),
    optimum_python: Optional[str] = typer.Option(None, "--optimum-python", help="The python of a virtualenv with optimum-intel (its pins clash with sdcli's) [default: this python, if it has optimum-intel]."),
    size: int = typer.Option(512, "--size", callback=positive_multiple_of_8, help="Image width and height."),
    precision: str = typer.Option("auto", "--precision", help="auto, f32, bf16 (diffusers: bf16 autocast for auto)."),
    weight_format: Optional[str] = typer.Option(None, "--weight-format", help="Weight format of the converted folder: fp16 (default), fp32, int8; a transformer arch also int4 [default there: int8]."),
    workdir: Optional[Path] = typer.Option(None, "--workdir", help="Where the random model is built and kept [default: ~/.cache/sdcli/bench]."),
    output_dir: Path = typer.Option(Path("bench-results"), "--output-dir", help="Where bench.json and bench.md go."),
    sdcli_arg: list[str] = typer.Option([], "--sdcli-arg", help="Extra argument for `sdcli generate` (repeatable)."),
    guidance_scale: Optional[float] = typer.Option(None, "--guidance-scale", min=0.0, max=100.0, help="Every peer's guidance scale (0: a Turbo-style run without guidance) [default: 7.5; a transformer arch: its folder's own]."),
    tiny_vae: bool = typer.Option(False, "--tiny-vae", help="Decode with the folder's TAESD (vae_decoder_tiny/): sdcli --vae tiny; optimum-intel with its VAE decoder model swapped for it, as FastSD CPU does; genai has none."),
    arch: str = typer.Option("sd15", "--arch", help="sd15, sdxl or sd-turbo (the real cost, random weights; sd-turbo's folder carries its defaults: 1 step, no guidance, Euler with trailing timesteps), flux2-klein or z-image (FLUX.2-klein 4B, Z-Image-Turbo: real architectures, random weights in bf16; docs/performance.md), or tiny / tiny-sdxl / tiny-sd-turbo / tiny-flux2-klein / tiny-z-image (a quick check of the benchmark itself)."),
    low_memory: bool = typer.Option(False, "--low-memory", help="A transformer arch: also run `sdcli generate --low-memory` (peer sdcli-low-memory), for its peak RSS."),
    text_encoder_apart: bool = typer.Option(True, "--text-encoder-apart/--no-text-encoder-apart", help="A transformer arch: also time sdcli's and genai's text encoders alone, each in a process of its own (its memory apart)."),
    append: bool = typer.Option(False, "--append", help="A transformer arch: keep the runs already in OUTPUT_DIR/bench.json (same machine and settings) and number these rounds after them, the rotation going on."),
    warm_cache: Optional[Path] = typer.Option(None, "--warm-cache", help="A transformer arch: keep the warm runs' caches in this folder (one per peer) instead of a temporary one; a peer already warmed up there is not warmed up again (with --append, more rounds in a later invocation)."),
    readme: Optional[Path] = typer.Option(None, "--readme", help="Also rewrite this README's bench table (between <!-- bench:NAME:start/end --> markers)."),
    readme_block: str = typer.Option("local", "--readme-block", help="NAME of the README block to rewrite."),
    no_run: bool = typer.Option(False, "--no-run", help="Run nothing; render OUTPUT_DIR/bench.json (into --readme's block, else on stdout)."),
):
    """Benchmark sdcli against openvino-genai, optimum-intel and diffusers on a random-weight model of a real architecture (SD 1.5, SDXL, SD-Turbo, FLUX.2-klein, Z-Image-Turbo)."""
    with user_errors("interrupted"):
        from sdcli.bench.peers import PEERS, run_bench, update_readme
        from sdcli.runtime.core import default_cache_dir

        if no_run:
            from sdcli.bench.flow import render_file, update_readme as update_any

            if readme is None:  # bench.md rendered again from bench.json
                print(render_file(output_dir / "bench.json"))
            else:
                update_any(readme, output_dir / "bench.json", readme_block)
            return

        step_list = _step_list(steps)
        from sdcli.bench.flow import FLOW_ARCHS

        if arch in FLOW_ARCHS:
            _flow_bench(arch, step_list, rounds, peers, modes, optimum_python, size, precision, weight_format,
                        workdir, output_dir, sdcli_arg, guidance_scale, tiny_vae, low_memory, text_encoder_apart,
                        append, warm_cache)
            return
        for flag, given in (("--low-memory", low_memory), ("--append", append), ("--warm-cache", warm_cache)):
            if given:
                raise UsageError(f"{flag}: only with a transformer --arch (flux2-klein, z-image, tiny-...)")
        step_list = step_list or [4, 20]
        guidance_scale = 7.5 if guidance_scale is None else guidance_scale
        weight_format = weight_format or "fp16"
        if weight_format not in ("fp16", "fp32", "int8"):
            raise UsageError(f"--weight-format takes fp16, fp32 or int8 for --arch {arch}, got {weight_format!r}")
        peer_list = [p.strip() for p in (peers or "sdcli,genai,optimum").split(",") if p.strip()]
        bad = [p for p in peer_list if p not in PEERS]
        if bad or not peer_list:
            raise UsageError(f"--peers takes {', '.join(PEERS)}; got {peers!r}")
        from sdcli.bench.peers import ARCHS

        if arch not in ARCHS:
            raise UsageError(f"--arch takes {', '.join(ARCHS + tuple(FLOW_ARCHS))}, got {arch!r}")
        from sdcli.bench.peers import TAESD_FLAGS

        if tiny_vae and arch not in TAESD_FLAGS:
            raise UsageError(f"--tiny-vae: no random tiny autoencoder fits --arch {arch}; take {', '.join(TAESD_FLAGS)}")
        mode_list = _mode_list(modes)
        if tiny_vae and ("genai" in peer_list or "diffusers" in peer_list):
            raise UsageError("--tiny-vae: openvino-genai and the diffusers peer have no tiny VAE; run --peers sdcli,optimum")
        _check_optimum(peer_list, optimum_python)
        work = workdir or default_cache_dir().parent / "bench"
        run_bench(work, output_dir, step_list, rounds, peer_list, size, precision, weight_format, list(sdcli_arg),
                  log=lambda s: print(s, file=sys.stderr, flush=True), arch=arch, modes=mode_list,
                  optimum_python=optimum_python, guidance=guidance_scale, tiny_vae=tiny_vae)
        print((output_dir / "bench.md").read_text())
        if readme is not None:
            update_readme(readme, output_dir / "bench.json", readme_block)


def _step_list(steps: Optional[str]) -> list[int]:
    if steps is None:
        return []
    try:
        step_list = [int(s) for s in steps.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--steps takes comma-separated numbers such as 4,20, got {steps!r}") from None
    if not step_list or min(step_list) < 1:
        raise UsageError("--steps needs positive step counts, e.g. 4,20")
    return step_list


def _mode_list(modes: str) -> tuple[str, ...]:
    from sdcli.bench.peers import MODES

    mode_list = tuple(m.strip() for m in modes.split(",") if m.strip())
    if not mode_list or any(m not in MODES for m in mode_list):
        raise UsageError(f"--modes takes {', '.join(MODES)}; got {modes!r}")
    return mode_list


def _check_optimum(peer_list: list[str], optimum_python: Optional[str]) -> None:
    if "optimum" in peer_list and optimum_python is None:
        import importlib.util

        if importlib.util.find_spec("optimum") is None:
            raise UsageError("--peers optimum needs optimum-intel: pass --optimum-python with the python of a "
                             "virtualenv that has it (pip install \"optimum-intel[openvino,diffusers]\")")


def _flow_bench(arch, step_list, rounds, peers, modes, optimum_python, size, precision, weight_format, workdir,
                output_dir, sdcli_arg, guidance_scale, tiny_vae, low_memory, text_encoder_apart, append=False,
                warm_cache=None) -> None:
    """`sdcli bench --arch flux2-klein | z-image | tiny-...` (sdcli/bench/flow.py)."""
    from sdcli.bench.flow import FLOW_PEERS, WEIGHT_FORMATS, run_flow_bench
    from sdcli.runtime.core import default_cache_dir

    weight_format = weight_format or "int8"
    if weight_format not in WEIGHT_FORMATS:
        raise UsageError(f"--weight-format takes {', '.join(WEIGHT_FORMATS)} for --arch {arch}, got {weight_format!r}")
    peer_list = [p.strip() for p in (peers or "sdcli,genai,optimum").split(",") if p.strip()]
    if low_memory and "sdcli-low-memory" not in peer_list:
        peer_list.append("sdcli-low-memory")
    bad = [p for p in peer_list if p not in FLOW_PEERS]
    if bad or not peer_list or len(set(peer_list)) != len(peer_list):
        raise UsageError(f"--peers takes {', '.join(FLOW_PEERS)} for --arch {arch}; got {peers!r}")
    if tiny_vae:
        raise UsageError(f"--tiny-vae: the transformer models have no tiny VAE (--arch {arch})")
    if size % 16:
        raise UsageError(f"--size must be a multiple of 16 for --arch {arch}, got {size}")
    if sdcli_arg:
        raise UsageError(f"--sdcli-arg: not with --arch {arch} (every peer runs the folder's own settings)")
    mode_list = _mode_list(modes)
    _check_optimum(peer_list, optimum_python)
    work = workdir or default_cache_dir().parent / "bench"
    run_flow_bench(work, output_dir, arch, weight_format, peer_list, rounds, size, precision,
                   log=lambda s: print(s, file=sys.stderr, flush=True), steps=step_list or None,
                   guidance=guidance_scale, modes=mode_list, optimum_python=optimum_python,
                   text_encoder_apart=text_encoder_apart, append=append, warm_cache=warm_cache)
    print((output_dir / "bench.md").read_text())


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
