"""Model families: what differs between Stable Diffusion 1.x/2.x (with LCM), SDXL, Z-Image
and FLUX.2-klein, behind one small interface (see base.py)."""
from __future__ import annotations

from sdcli.engine.families.base import Conditioning, EncodedPrompt, ModelFamily
from sdcli.engine.families.flux2_klein import Flux2Klein
from sdcli.engine.families.sd import StableDiffusion
from sdcli.engine.families.sdxl import StableDiffusionXL
from sdcli.engine.families.z_image import ZImage
from sdcli.model.folder import ModelFolder

__all__ = ["Conditioning", "EncodedPrompt", "Flux2Klein", "ModelFamily", "StableDiffusion", "StableDiffusionXL",
           "ZImage", "family_for"]

# a transformer folder's family, by its transformer's config class
TRANSFORMER_FAMILIES = {"ZImageTransformer2DModel": ZImage, "Flux2Transformer2DModel": Flux2Klein}


def family_for(folder: ModelFolder) -> ModelFamily:
    """The family whose pipeline runs the model in `folder` (told by its denoiser: a UNet's
    config, or a transformer's class, whatever model_index.json calls the pipeline)."""
    if folder.denoiser == "transformer":
        from sdcli.util.errors import UsageError

        class_name = folder.denoiser_config.get("_class_name")
        if class_name not in TRANSFORMER_FAMILIES:
            raise UsageError(f"{folder.root}/transformer: {class_name!r} is not a transformer sdcli runs "
                             f"({', '.join(TRANSFORMER_FAMILIES)})")
        return TRANSFORMER_FAMILIES[class_name](folder)
    return StableDiffusionXL(folder) if folder.is_sdxl else StableDiffusion(folder)
