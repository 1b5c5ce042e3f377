"""The noise-schedule buffers that LDM/SGM checkpoints (SD1, SDXL) store next to the weights.

They describe the DDPM schedule, one value per training timestep, and are recomputed by every UI;
pruned files drop them. They pass through a merge unchanged (component ``scheduler``).
"""

from __future__ import annotations

from mecha_core import KeySpec

from mecha_core.keyspecs import param, passthrough

TIMESTEPS = 1000
TINY_TIMESTEPS = 16
# The buffers LatentDiffusion registers in register_schedule().
BUFFERS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
)


def scheduler_keys(tiny: bool = False) -> list[KeySpec]:
    """The schedule buffers: optional, passed through."""
    steps = TINY_TIMESTEPS if tiny else TIMESTEPS
    return passthrough([param(name, (steps,)) for name in BUFFERS], "scheduler", optional=True)
