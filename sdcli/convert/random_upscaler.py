"""Tiny random-weight upscaler checkpoints, built from spandrel's own architecture classes and
saved with their real tensor names, so that `sdcli convert` recognises them as it would the
real ones (for the tests, and to try `sdcli upscale` without a download):

    python -m sdcli.convert.random_upscaler esrgan tiny-esrgan.safetensors
"""
from __future__ import annotations

import sys
from pathlib import Path


def _builders() -> dict:
    from sdcli.convert.spandrel_import import import_spandrel

    import_spandrel()
    from spandrel.architectures.Compact import Compact
    from spandrel.architectures.ESRGAN import ESRGAN
    from spandrel.architectures.HAT import HAT
    from spandrel.architectures.SPAN import SPAN
    from spandrel.architectures.SwinIR import SwinIR

    return {
        # RRDBNet in the original ESRGAN layout (4x-UltraSharp, RealESRGAN x4plus are this, with 23 blocks of 64)
        "esrgan": lambda: ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=4),
        # Real-ESRGAN Compact (SRVGGNetCompact; realesr-general-x4v3 and animevideov3 are this, 64 features)
        "compact": lambda: Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=4),
        "span": lambda: SPAN(num_in_ch=3, num_out_ch=3, feature_channels=8, upscale=2),
        "swinir": lambda: SwinIR(img_size=16, in_chans=3, embed_dim=12, depths=[1], num_heads=[2], window_size=4,
                                 mlp_ratio=2, upscale=2, upsampler="pixelshuffle", resi_connection="1conv"),
        "hat": lambda: HAT(img_size=16, in_chans=3, embed_dim=12, depths=(1,), num_heads=(2,), window_size=4,
                           compress_ratio=3, squeeze_factor=3, mlp_ratio=2, upscale=2, upsampler="pixelshuffle",
                           resi_connection="1conv"),
    }


ARCHITECTURES = ("esrgan", "compact", "span", "swinir", "hat")


def build(kind: str, seed: int = 0):
    """A tiny `kind` network (torch module) with every weight drawn at random (spread_weights:
    no zero-initialised layer leaves the output independent of the input)."""
    import torch

    from sdcli.convert.random_weights import spread_weights

    torch.manual_seed(seed)
    net = _builders()[kind]().eval()
    spread_weights(net, seed=seed)
    if kind == "span":  # it works at 255 times the pixel values: its first convolution scaled
        with torch.no_grad():  # by 1/255 so that its features stay about 1 and its output about 0..1
            for p in net.conv_1.parameters():
                p.mul_(1 / 255)
    return net


def save(kind: str, path: Path, seed: int = 0) -> Path:
    """A tiny random `kind` checkpoint written to `path` (.safetensors, or .pth by torch.save)."""
    import torch

    net = build(kind, seed)
    state = {name: tensor.detach().contiguous().clone() for name, tensor in net.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save({"params_ema": state}, path)  # BasicSR's layout, which spandrel unwraps
    return path


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ARCHITECTURES:
        sys.exit(f"usage: python -m sdcli.convert.random_upscaler {{{','.join(ARCHITECTURES)}}} OUT.safetensors|OUT.pth")
    print(save(sys.argv[1], Path(sys.argv[2])))
