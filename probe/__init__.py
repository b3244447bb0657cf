"""probe: look inside diffusion models (Baranchuk et al., ICLR 2022, reproduced and extended)."""

__version__ = "0.1.0"
