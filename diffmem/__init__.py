"""diffmem: memorization and generalization in diffusion models, in JAX/Flax.

The documented core, for notebooks and scripts:

    import diffmem
    model = diffmem.Model.from_denoiser(D, shape=(2,), sigma_range=(0.002, 80.0))
    x = diffmem.sample(D, range(16), shape=(2,), sampler="edm_heun")   # a plain batched D(x, sigma)
    wd = diffmem.Workdir("runs/c9"); m = wd.model("9")
    x = diffmem.sample(m, range(16), sampler="em", config=wd.config)  # bin/sample.py's settings
    nb = diffmem.nearest(x, m.train_data, k=2)                          # exact L2 neighbours

Model (`diffmem.model`), Workdir (`diffmem.workdir`), the noise processes VESDE, GeometricVESDE,
VPSDE (`diffmem.sde`), the preconditionings EDM, VP, VE, DDPM (`diffmem.precond`), the empirical
optimal denoiser and the energies (`diffmem.energy`), `sample` (`diffmem.sample_api`), `nearest`
(`diffmem.metrics.neighbours`), `classify` (`diffmem.metrics.classify`), `memorization_ratio`
(`diffmem.metrics.memorization`) and `log_likelihood` (`diffmem.likelihood`).

Names and submodules are imported on first use (`diffmem.energy`, `from diffmem import sampling`),
so importing the package stays cheap and optional extras (TFDS, LPIPS) are only loaded when asked
for.
"""
import importlib

__version__ = "0.1.0"

# public name -> the module that defines it (imported on first access)
_EXPORTS = {"Model": "diffmem.model", "Workdir": "diffmem.workdir", "VESDE": "diffmem.sde",
            "GeometricVESDE": "diffmem.sde", "VPSDE": "diffmem.sde", "EDM": "diffmem.precond",
            "VP": "diffmem.precond", "VE": "diffmem.precond", "DDPM": "diffmem.precond",
            "empirical_denoiser": "diffmem.energy", "empirical_score": "diffmem.energy",
            "dense_am_energy": "diffmem.energy", "diffusion_energy": "diffmem.energy",
            "circle_energy": "diffmem.energy", "sample": "diffmem.sample_api",
            "nearest": "diffmem.metrics.neighbours", "classify": "diffmem.metrics.classify",
            "memorization_ratio": "diffmem.metrics.memorization",
            "log_likelihood": "diffmem.likelihood"}

# public submodules (attributes of the package once imported, or on first access)
_SUBMODULES = ("atomic", "builders", "checkpoint", "cli", "config_schema", "configlib",
               "cpu_parallel", "data", "devices", "energy", "errors", "generate", "image_configs",
               "layout", "likelihood", "lock", "losses", "machines", "metrics", "model", "monitor",
               "multihost", "nets", "precond", "report", "sample_api", "sampling", "schedules",
               "sde", "seeds", "stats", "studies", "train", "viz", "workdir")

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"diffmem.{name}")
    raise AttributeError(f"module 'diffmem' has no attribute {name!r}")


def __dir__():
    return sorted(set(__all__) | set(_SUBMODULES) | {"__version__"})
