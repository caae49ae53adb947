"""diffmem: memorization and generalization in diffusion models, in JAX/Flax.

Submodules are imported on use (`from diffmem import sde, nets, losses, train, sampling`), so importing
the package stays cheap and optional extras (TFDS, LPIPS) are only loaded when asked for.
"""
import importlib

__version__ = "0.1.0"

_SUBMODULES = ("checkpoint", "configlib", "data", "energy", "layout", "likelihood", "losses",
               "metrics", "model", "nets", "precond", "report", "sampling", "sde", "studies",
               "train", "viz")


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"diffmem.{name}")
    raise AttributeError(f"module 'diffmem' has no attribute {name!r}")
