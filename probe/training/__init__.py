"""Training loops for the models the project probes: a guided-diffusion DDPM (ddpm) and an MAE (mae)."""
