"""The API's request and response bodies, with AUTOMATIC1111's field names (its
modules/api/models.py): what OpenAPI at /docs shows.

Requests accept every field A1111's do and more: clients send many that sdcli does not use
(webuiapi about 45, with its own defaults), and those are accepted.  What a field that switches
on something sdcli does not do is refused for is checked in a1111.py, which names the field.
Nulls are accepted wherever A1111's models allow them (all its processing fields are optional).
"""
from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field


class ProcessingRequest(BaseModel):
    """The fields txt2img and img2img share."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    prompt: Optional[str] = Field("", description="What to draw (A1111's prompt syntax: (word:1.2), [word]).")
    negative_prompt: Optional[str] = Field("", description="What to steer away from.")
    styles: Optional[list[str]] = Field(None, description="Prompt styles: none exist here (a style name is refused; empty strings pass).")
    seed: Optional[int] = Field(-1, description="-1: a random seed; image i of the request uses seed + i.")
    subseed: Optional[int] = Field(-1, description="Variation seed: accepted, used only with subseed_strength, which must be 0.")
    subseed_strength: Optional[float] = Field(0, description="Variation strength: must be 0 (not supported).")
    seed_resize_from_h: Optional[int] = Field(-1, description="Must be 0, -1 or the height (not supported).")
    seed_resize_from_w: Optional[int] = Field(-1, description="Must be 0, -1 or the width (not supported).")
    sampler_name: Optional[str] = Field(None, description="A1111's sampler (GET /sdapi/v1/samplers) or sdcli's name; null: the model's own scheduler.")
    sampler_index: Optional[str] = Field(None, description="Old name of sampler_name, used when sampler_name is null.")
    scheduler: Optional[str] = Field(None, description="A1111's schedule type (GET /sdapi/v1/schedulers): Automatic, Karras, or the model's own spacing.")
    batch_size: Optional[int] = Field(1, description="Images per batch (1 to 8); the images are made one after another.")
    n_iter: Optional[int] = Field(1, description="Batches (1 to 100).")
    steps: Optional[int] = Field(None, description="Denoising steps [null: the model folder's default, else 20; an LCM model's 4].")
    cfg_scale: Optional[float] = Field(None, description="Classifier-free guidance [null: the model folder's default, else 7.5; an LCM model's 8.5].")
    guidance_rescale: Optional[float] = Field(None, description="sdcli's: diffusers' guidance_rescale (generate --guidance-rescale), 0 to 1 [null: 0, off]; A1111 has no such field.")
    width: Optional[int] = Field(None, description="A multiple of 8 [null: the model's size, or the init image's].")
    height: Optional[int] = Field(None, description="A multiple of 8 [null: the model's size, or the init image's].")
    restore_faces: Optional[bool] = Field(None, description="Must be false or null (not supported).")
    tiling: Optional[bool] = Field(None, description="Must be false or null (not supported).")
    override_settings: Optional[dict[str, Any]] = Field(None, description="Options for this request only: sd_model_checkpoint (a title from /sd-models), CLIP_stop_at_last_layers, emphasis, sd_vae_decode_method.")
    override_settings_restore_afterwards: Optional[bool] = Field(True, description="false: override_settings become the server's options.")
    script_name: Optional[str] = Field(None, description="Must be empty (no scripts here).")
    script_args: Optional[list[Any]] = Field(None, description="Accepted and unused.")
    alwayson_scripts: Optional[dict[str, Any]] = Field(None, description="Must be empty (no scripts here).")
    send_images: Optional[bool] = Field(True, description="false: the response has no images.")
    save_images: Optional[bool] = Field(False, description="Accepted and unused: the server keeps no images; they come back in the response.")


class Txt2ImgRequest(ProcessingRequest):
    enable_hr: Optional[bool] = Field(False, description="The hires fix (docs/hires.md): a second image-to-image pass at hr_scale times the size, or at hr_resize_x x hr_resize_y.")
    denoising_strength: Optional[float] = Field(None, description="The hires fix: the second pass's denoising strength, more than 0 and up to 1 [null: 0.75, A1111's API default].")
    hr_scale: Optional[float] = Field(2.0, description="The hires fix: the size's factor, more than 1 (used when hr_resize_x and hr_resize_y are 0).")
    hr_upscaler: Optional[str] = Field(None, description="The hires fix: a name from /sdapi/v1/latent-upscale-modes, or Lanczos, Nearest [null: Latent].")
    hr_second_pass_steps: Optional[int] = Field(0, description="The hires fix: the second pass's steps (0: steps), run on the tail of int(steps / denoising_strength).")
    hr_resize_x: Optional[int] = Field(0, description="The hires fix: the target width, a multiple of 8 (0: from hr_resize_y's aspect, or hr_scale); with hr_resize_y, the upscaled first pass is cut about the centre.")
    hr_resize_y: Optional[int] = Field(0, description="The hires fix: the target height (see hr_resize_x).")
    hr_prompt: Optional[str] = Field("", description="The hires fix: the second pass's prompt [\"\": prompt].")
    hr_negative_prompt: Optional[str] = Field("", description="The hires fix: the second pass's negative prompt [\"\": negative_prompt].")
    hr_sampler_name: Optional[str] = Field(None, description="The hires fix: the second pass's sampler [null: sampler_name].")
    hr_scheduler: Optional[str] = Field(None, description="The hires fix: the second pass's schedule type [null: scheduler].")
    hr_cfg: Optional[float] = Field(None, description="The hires fix: the second pass's CFG scale (Forge's) [null: cfg_scale].")
    hr_checkpoint_name: Optional[str] = Field(None, description="Must be null or \"Use same checkpoint\" (no other checkpoint for the second pass).")
    firstphase_width: Optional[int] = Field(0, description="Legacy: with enable_hr, the first pass's width (A1111 then upscales it by hr_scale).")
    firstphase_height: Optional[int] = Field(0, description="Legacy: with enable_hr, the first pass's height.")


class Img2ImgRequest(ProcessingRequest):
    init_images: Optional[list[str]] = Field(None, description="Base64 images (a data: prefix is accepted); image i of the request starts from init_images[i % len].")
    denoising_strength: Optional[float] = Field(0.75, description="How much of the init image is repainted, 0 to 1.")
    mask: Optional[str] = Field(None, description="Base64 inpainting mask: white (or opaque) is repainted.")
    mask_blur: Optional[int] = Field(None, description="Gaussian blur of the mask in pixels [4].")
    inpainting_mask_invert: Optional[int] = Field(0, description="1: repaint the black part instead.")
    resize_mode: Optional[int] = Field(0, description="Must be 0 (just resize) or null.")
    initial_noise_multiplier: Optional[float] = Field(None, description="Must be 1 or null.")
    include_init_images: Optional[bool] = Field(False, description="true: the init images and mask are kept in the response's parameters.")


class GenerationResponse(BaseModel):
    images: Optional[list[str]] = Field(None, description="Base64 PNGs (no data: prefix), each with its A1111 parameters text chunk.")
    parameters: dict = Field(description="The request as it was understood.")
    info: str = Field(description="A JSON string: seed, all_seeds, infotexts, ... (A1111's Processed.js()).")


class ProgressResponse(BaseModel):
    progress: float = Field(description="0 to 1.")
    eta_relative: float = Field(description="Seconds left, estimated.")
    state: dict = Field(description="job, job_count, job_no, sampling_step, sampling_steps, interrupted, skipped, ...")
    current_image: Optional[str] = Field(None, description="A preview of the running image (base64 PNG), from the model's tiny VAE when it has one.")
    textinfo: Optional[str] = None


class PNGInfoRequest(BaseModel):
    image: str = Field(description="A base64 PNG (a data: prefix is accepted).")


class PNGInfoResponse(BaseModel):
    info: str = Field(description="The parameters text.")
    items: dict = Field(description="The PNG's other text chunks.")
    parameters: dict = Field(description="The fields, parsed as A1111 parses them.")


class SDModelItem(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    title: str
    model_name: str
    hash: Optional[str] = None
    sha256: Optional[str] = None
    filename: str
    config: Optional[str] = None


class SamplerItem(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, Any]


class SchedulerItem(BaseModel):
    name: str
    label: str
    aliases: Optional[list[str]] = None
    default_rho: Optional[float] = None
    need_inner_model: Optional[bool] = None


class UpscalerItem(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    name: str
    model_name: Optional[str] = None
    model_path: Optional[str] = None
    model_url: Optional[str] = None
    scale: Optional[float] = None


class MemoryResponse(BaseModel):
    ram: dict
    cuda: dict


class ErrorResponse(BaseModel):
    error: str = Field(description="What kind of error.")
    detail: str = Field(description="What is wrong, in one line.")
