"""Import (and export) networks trained by other codebases' PyTorch code, without torch and without
running anything stored in their files.

Format layer (data only; every file is parsed by a restricted reader that rebuilds arrays and plain
containers and refuses every other global):

    torch_files        torch zip checkpoints, legacy torch streams, EDM network pickles (read);
                       `flatten_state_dict` / `strip_prefix` turn them into {dotted name: array}
    torch_writers      the same formats written from numpy arrays (tests, exporting diffmem models)
    safetensors_files  safetensors files (diffusers' `diffusion_pytorch_model.safetensors`):
                       read and write

Network mappings (one module per source codebase) build on these.
"""
from __future__ import annotations

from diffmem.importers.safetensors_files import (SAFETENSORS_DTYPES, parse_safetensors,
                                                 read_safetensors, read_safetensors_metadata,
                                                 write_safetensors)
from diffmem.importers.torch_files import (ALLOWED_GLOBALS, PickledObject, UnsafePickleError,
                                           flatten_state_dict, parse_legacy_torch, read_edm_pickle,
                                           read_network_pickle, read_torch_file, read_torch_zip,
                                           strip_prefix)
from diffmem.importers.torch_writers import (Parameter, TensorView, write_network_pickle,
                                             write_torch_legacy, write_torch_zip)

__all__ = ["ALLOWED_GLOBALS", "Parameter", "PickledObject", "SAFETENSORS_DTYPES", "TensorView",
           "UnsafePickleError", "flatten_state_dict", "parse_legacy_torch", "parse_safetensors",
           "read_edm_pickle", "read_network_pickle", "read_safetensors",
           "read_safetensors_metadata",
           "read_torch_file", "read_torch_zip", "strip_prefix", "write_network_pickle",
           "write_safetensors", "write_torch_legacy", "write_torch_zip"]
