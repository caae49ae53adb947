"""Kadkhodaie et al.'s bias-free blind denoisers (`model.pt` state dicts of
LabForComputationalVision/memorization_generalization_in_diffusion_models, `code/network.py`) <->
diffmem's `nets.BFUNet` (`model.name = "bf_unet"`) and `nets.BFCNN` (`"bf_cnn"`).

Their UNet keeps each stage in an nn.Sequential, so a key is `<part>.<stage>.<index>.<param>`:

    encoder.<b>.<3l>.weight              (b = 0: the first conv at 0, then 2, 5, 8 ...)   -> Conv_n
    encoder.<b>.<3l+1>.gammas            (1, C, 1, 1)                -> BFBatchNorm_m/scale (C,)
    encoder.<b>.<3l+1>.running_sd        (1, C, 1, 1)   -> batch_stats/BFBatchNorm_m/running_sd (C,)
    mid_block.<3l>.weight, mid_block.<3l+1>.{gammas, running_sd}     likewise
    upsample.<b>.weight                  ConvTranspose2d (I, O, 2, 2), no bias  -> UpConv2_k (convT)
    decoder.<b>.<3l>.weight, decoder.<b>.<3l+1>.{gammas, running_sd}; decoder.0's last conv maps to
                                         the image channels without norm
BF_CNN: conv_layers.<i>.weight -> Conv_i, BN_layers.<i>.{gammas, running_sd} -> BFBatchNorm_i.

diffmem creates its Conv / BFBatchNorm / UpConv2 modules in the same order as their forward pass
uses them (encoder stages, middle, then per decoder stage the transposed conv and its convs), so the
n-th conv of their module order is Conv_n. All convs are 3x3 with padding 1 and no bias (a file with
biases is not bias free and is refused); pooling is 2x2 average (pool_window 2).

The architecture is read off the keys and shapes (num_kernels, num_blocks, num_enc_conv,
num_mid_conv, num_dec_conv; BF-CNN's num_layers); `exp_arguments.pkl` beside the file, read as a
plain dict, is checked against it and gives BF-CNN's `first_layer_linear`, which the weights cannot
tell (otherwise the caller's value, default False as their main.py). The running sds are the
batch-norm statistics eval mode uses; they go to the `batch_stats` collection, the gammas to
`params`.

Output convention: the residual f(y) of [0, 1] images, D(y) = y - f(y); diffmem's blind models use
exactly that on (x + 1) / 2 (`nets.bfcnn.signed_range_denoiser`), so the config gets Kadkhodaie's
recipe sections (VE noise range for reports, the KS sampler with h0 = beta = sigma_L = 0.01). The
image size is not in the file: the caller gives it (or the data does).
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from diffmem.importers.tensor_map import (Entry, ImportedModel, MappingError, from_flax, template,
                                          to_flax)

__all__ = ["WHO", "architecture", "entries", "from_state", "to_state", "read"]

WHO = "Kadkhodaie et al. denoiser"


def _bn(prefix: str, n: int) -> list[Entry]:
    return [Entry(f"{prefix}.gammas", ("params", f"BFBatchNorm_{n}", "scale"), "chan"),
            Entry(f"{prefix}.running_sd", ("batch_stats", f"BFBatchNorm_{n}", "running_sd"),
                  "chan")]


def _indices(state: Mapping[str, Any], pattern: str) -> list[int]:
    return sorted({int(m.group(1)) for k in state if (m := re.fullmatch(pattern, k))})


def architecture(state: Mapping[str, np.ndarray], args: Mapping[str, Any] | None = None,
                 first_layer_linear: bool | None = None) -> dict:
    """{name: "bf_unet" | "bf_cnn", channels, and the net's fields} read off a state dict's keys and
    shapes, checked against `args` (their exp_arguments dict) when given."""
    args = dict(args or {})
    biases = [k for k in state if k.endswith(".bias")]
    if biases or str(args.get("bias", False)).lower() == "true":
        raise MappingError(f"{WHO}: tensor {biases[0] if biases else 'bias'!r}: the network has "
                           "biases, so it is not bias free; diffmem's blind nets have none.")
    if any(k.startswith("encoder.") for k in state):
        blocks = _indices(state, r"encoder\.(\d+)\..*")
        first = np.shape(state.get("encoder.0.0.weight", np.zeros((0, 0, 0, 0))))
        if len(first) != 4:
            raise MappingError(f"{WHO}: no encoder.0.0.weight (the first conv).")

        def convs(prefix):
            return len([k for k in state if re.fullmatch(prefix + r"\.\d+\.weight", k)
                        and np.ndim(state[k]) == 4])
        hp = dict(name="bf_unet", channels=int(first[1]), num_kernels=int(first[0]),
                  num_blocks=len(blocks), num_enc_conv=convs(r"encoder\.0"),
                  num_mid_conv=convs(r"mid_block"), num_dec_conv=convs(r"decoder\.0"))
        checks = ("num_kernels", "num_blocks", "num_enc_conv", "num_mid_conv", "num_dec_conv")
    elif any(k.startswith("conv_layers.") for k in state):
        layers = _indices(state, r"conv_layers\.(\d+)\.weight")
        first = np.shape(state["conv_layers.0.weight"])
        fll = args.get("first_layer_linear", first_layer_linear)
        hp = dict(name="bf_cnn", channels=int(first[1]), num_kernels=int(first[0]),
                  num_layers=len(layers),
                  first_layer_linear=bool(fll) if not isinstance(fll,
                                                                 str) else fll.lower() == "true")
        checks = ("num_kernels", "num_layers")
    else:
        key = next(iter(state), "(none)")
        raise MappingError(f"{WHO}: tensor {key!r} is neither their UNet's (encoder.*) nor "
                           "BF_CNN's (conv_layers.*).")
    arch = str(args.get("arch_name", "UNet" if hp["name"] == "bf_unet" else "BF_CNN"))
    if arch != ("UNet" if hp["name"] == "bf_unet" else "BF_CNN"):
        raise MappingError(f"{WHO}: exp_arguments arch_name {arch!r} does not match the weights "
                           f"({hp['name']}).")
    for key in checks + ("num_channels",):
        if key in args and int(args[key]) != hp["channels" if key == "num_channels" else key]:
            raise MappingError(f"{WHO}: exp_arguments {key} = {args[key]} but the weights say "
                               f"{hp['channels' if key == 'num_channels' else key]}.")
    for key, want in (("kernel_size", 3), ("padding", 1), ("pool_window", 2)):
        if key in args and int(args[key]) != want:
            raise MappingError(f"{WHO}: exp_arguments {key} = {args[key]}; diffmem's nets use "
                               f"{want}.")
    return hp


def entries(hp: Mapping) -> list[Entry]:
    """The map of a net with hyper-parameters `hp` (`architecture`), in their module order."""
    out: list[Entry] = []
    n_conv = n_bn = 0

    def conv(key):
        nonlocal n_conv
        out.append(Entry(key, ("params", f"Conv_{n_conv}", "kernel"), "conv"))
        n_conv += 1

    def bn(prefix):
        nonlocal n_bn
        out.extend(_bn(prefix, n_bn))
        n_bn += 1

    if hp["name"] == "bf_cnn":
        for i in range(hp["num_layers"]):
            conv(f"conv_layers.{i}.weight")
            if 0 < i < hp["num_layers"] - 1:
                bn(f"BN_layers.{i - 1}")
        return sorted(out, key=lambda e: e.key.startswith("BN_layers."))  # torch's state-dict order
    for b in range(hp["num_blocks"]):
        for i in range(hp["num_enc_conv"]):
            if b == 0 and i == 0:
                conv("encoder.0.0.weight")
            else:
                j = 3 * i - 1 if b == 0 else 3 * i  # b = 0: conv, ReLU, then [conv, BN, ReLU] ...
                conv(f"encoder.{b}.{j}.weight")
                bn(f"encoder.{b}.{j + 1}")
    for i in range(hp["num_mid_conv"]):
        conv(f"mid_block.{3 * i}.weight")
        bn(f"mid_block.{3 * i + 1}")
    for k, b in enumerate(reversed(range(hp["num_blocks"]))):
        out.append(Entry(f"upsample.{b}.weight", ("params", f"UpConv2_{k}", "kernel"), "convT"))
        for i in range(hp["num_dec_conv"]):
            conv(f"decoder.{b}.{3 * i}.weight")
            if not (b == 0 and i == hp["num_dec_conv"] - 1):
                bn(f"decoder.{b}.{3 * i + 1}")
    parts = ("encoder", "mid_block", "decoder", "upsample")  # torch's state-dict order
    return sorted(out, key=lambda e: parts.index(e.key.split(".")[0]))


def _config(hp: Mapping) -> tuple[dict, dict, dict]:
    from diffmem import image_configs as ic
    model = {k: v for k, v in hp.items() if k != "channels"}
    diffusion = ic.diffusion_section("ve")
    diffusion["precond_fields"].update(sigma_min=0.02, sigma_max=2.0)
    sample = dict(num=16, sampler="ks", batch=16, h0=0.01, beta=0.01, sigma_L=0.01, init_mean=0.0,
                  max_iters=3000)
    return model, diffusion, sample


def from_state(state: Mapping[str, np.ndarray], args: Mapping[str, Any] | None = None, *,
               image_size: int, first_layer_linear: bool | None = None) -> ImportedModel:
    """Map their state dict (dotted keys, `module.` prefix already stripped) onto BFUNet / BFCNN
    variables for images of side `image_size` (which the weights do not fix)."""
    import ml_collections

    from diffmem import builders
    hp = architecture(state, args, first_layer_linear)
    model, diffusion, sample = _config(hp)
    shape = (int(image_size), int(image_size), hp["channels"])
    if hp["name"] == "bf_unet" and image_size % 2 ** hp["num_blocks"]:
        raise MappingError(f"{WHO}: image size {image_size} is not divisible by "
                           f"2^{hp['num_blocks']}, which their {hp['num_blocks']}-block UNet "
                           "needs.")
    net = builders.build_model(ml_collections.ConfigDict(dict(model=model)), shape)
    variables = to_flax(state, entries(hp), template(net, (1,) + shape), WHO)
    info = dict(format="kadkhodaie", architecture=dict(hp), exp_arguments=sorted(dict(args or {})))
    return ImportedModel(model=model, diffusion=diffusion, sample=sample, variables=variables,
                         image_shape=shape, step=1, source_info=info)


def to_state(variables: Mapping, hp: Mapping) -> dict[str, np.ndarray]:
    """Their state dict (module order, torch layout) of BFUNet / BFCNN variables; the inverse of
    `from_state` (hp: `architecture`'s result)."""
    return from_flax(variables, entries(hp), WHO)


def read(path: str, *, image_size: int, first_layer_linear: bool | None = None) -> ImportedModel:
    """Import a `model.pt` (a torch zip state dict; a DataParallel `module.` prefix is stripped),
    with `exp_arguments.pkl` from the same folder when present (read as a plain dict, nothing
    executed)."""
    import os

    from diffmem.importers import torch_files

    tree = torch_files.read_torch_file(path)
    state = torch_files.strip_prefix(torch_files.flatten_state_dict(tree))
    args_path = os.path.join(os.path.dirname(os.path.abspath(path)), "exp_arguments.pkl")
    args = torch_files.read_network_pickle(args_path) if os.path.exists(args_path) else None
    if args is not None and not isinstance(args, Mapping):
        raise MappingError(f"{WHO}: {args_path} does not hold a dict of settings.")
    return from_state(state, args, image_size=image_size, first_layer_linear=first_layer_linear)
