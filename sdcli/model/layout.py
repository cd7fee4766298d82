"""The folder layout of a converted model (optimum-cli's, plus sdcli's extras): component
folder names shared by the converter, the model reader and the engine."""

# What every converted Stable Diffusion folder has
REQUIRED = ("text_encoder", "unet", "vae_decoder", "tokenizer", "scheduler")
# ... and an SDXL one (its refiner has no first text encoder)
REQUIRED_SDXL = ("text_encoder_2", "unet", "vae_decoder", "tokenizer_2", "scheduler")
# ... and a flow-matching transformer model's (Z-Image: one LLM text encoder)
REQUIRED_TRANSFORMER = ("transformer", "text_encoder", "vae_decoder", "tokenizer", "scheduler")
# The tiny autoencoder (TAESD) that `sdcli convert --tiny-vae` adds beside the full VAE
TINY_DECODER = "vae_decoder_tiny"
TINY_ENCODER = "vae_encoder_tiny"
# Components with an OpenVINO IR, in the order `sdcli info` lists them
IR_COMPONENTS = ("text_encoder", "text_encoder_2", "unet", "transformer", "vae_encoder", "vae_decoder", TINY_ENCODER, TINY_DECODER)
