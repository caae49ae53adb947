"""Analytic local score machines (Kamb & Ganguli 2025; Niedoba et al. 2025; the Wiener filter) on
one streamed patch log-sum-exp kernel, as denoisers and `diffmem.model.Model` records; locality
calibration against a trained model and machine-vs-network agreement (see the modules)."""
from diffmem.machines.models import MACHINES, machine_denoiser, machine_model
from diffmem.machines.schedule import Schedule, as_schedule, kamb_schedule

__all__ = ["MACHINES", "machine_denoiser", "machine_model", "Schedule", "as_schedule",
           "kamb_schedule"]
