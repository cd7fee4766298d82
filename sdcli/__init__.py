"""sdcli: Stable Diffusion on an ordinary CPU, through OpenVINO, from the command line."""

__version__ = "0.1.0"
