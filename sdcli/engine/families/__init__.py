"""Model families: what differs between Stable Diffusion 1.x/2.x (with LCM), and the
SDXL, behind one small interface (see base.py)."""
from __future__ import annotations

from sdcli.engine.families.base import Conditioning, EncodedPrompt, ModelFamily
from sdcli.engine.families.sd import StableDiffusion
from sdcli.engine.families.sdxl import StableDiffusionXL
from sdcli.model.folder import ModelFolder

__all__ = ["Conditioning", "EncodedPrompt", "ModelFamily", "StableDiffusion", "StableDiffusionXL", "family_for"]


def family_for(folder: ModelFolder) -> ModelFamily:
    """The family whose pipeline runs the model in `folder` (told by its UNet, whatever
    model_index.json calls the pipeline)."""
    return StableDiffusionXL(folder) if folder.is_sdxl else StableDiffusion(folder)
