"""Pham et al.'s DDPM UNet checkpoints (`train_unet.py` of
Lemon-cmd/Diffusion-Models-and-Associative-Memory, also their released `K.pt` files) <-> diffmem's
`nets.DDPMUNet` (`model.name = "ddpm_unet"`).

Their network (`src/models/ddpm.py`, the score_sde port of Ho et al.) keeps every layer in one
`all_modules` ModuleList, so a state-dict key is `all_modules.<i>.<sub>.<param>`, i counting modules
in construction order:

    0, 1        Linear(nf, 4 nf), Linear(4 nf, 4 nf)   -> temb_0, temb_1  (weight (O, I) -> (I, O))
    2           Conv2d(C, nf, 3)                         -> conv_in         (OIHW -> HWIO)
    down        per level, num_res_blocks x [ResnetBlockDDPM (+ AttnBlock at attn_resolutions)],
                then Downsample (Conv_0, stride 2, padded (0, 1) like TF 'SAME') except at the last
                level
    middle      ResnetBlockDDPM, AttnBlock, ResnetBlockDDPM
    up          per level (reversed), num_res_blocks + 1 x [ResnetBlockDDPM (+ AttnBlock)], then
                Upsample (nearest x2, Conv_0) except at level 0
    last two    GroupNorm(32, eps 1e-6) -> norm_out (weight -> scale), Conv2d(nf, C, 3) -> conv_out

ResnetBlockDDPM: GroupNorm_0 -> norm1, Conv_0 -> conv1, Dense_0 -> temb_proj, GroupNorm_1 -> norm2,
Conv_1 -> conv2, NIN_0 (W (I, O), b; only when the width changes) -> skip (a Dense: no transpose).
AttnBlock: GroupNorm_0 -> norm, NIN_0 / NIN_1 / NIN_2 -> q / k / v, NIN_3 -> proj_out (single head,
logits scaled by C^-1/2, as diffmem's). Their time embedding is get_timestep_embedding: [sin, cos]
with frequencies 10000^(-j / (half - 1)), diffmem's `SinusoidalEmbedding` default. diffmem's
ResBlock and AttnBlock names count up in the same order as the modules (ResBlock_0, ResBlock_1,
...).

Output convention: epsilon prediction on integer steps of Ho et al.'s T = 1000 linear betas
1e-4..0.02 (their DDPMScheduler), so the config gets `diffusion.precond = "ddpm"` and D(x) = x -
sigma eps(x / sqrt(1 + sigma^2), t(sigma)). Their `args` (an argparse Namespace of parse_utils
dataclasses) gives the architecture: model.{image_size, in_channels, dim, dim_mults,
attn_resolutions, num_res_blocks, dropout, conditional, resamp_with_conv, nonlinearity,
scale_by_sigma}; train.{beta_schedule, prediction_type, train_size}. Without args (a bare state
dict) the architecture is read off the keys and shapes (`infer_args`), with the image size given by
the caller. Not representable (refused in one line): conditional=False (no time embedding),
resamp_with_conv=False, a nonlinearity other than swish, scale_by_sigma, prediction_type other than
epsilon, a beta schedule other than linear.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from diffmem.importers.tensor_map import (Entry, ImportedModel, MappingError, from_flax, template,
                                          to_flax)

__all__ = ["WHO", "architecture", "entries", "infer_args", "from_state", "to_state", "read"]

WHO = "Pham et al. checkpoint"
_DEFAULTS = dict(image_size=32, in_channels=3, dim=128, dim_mults=(1, 2, 2, 2),
                 attn_resolutions=(16,), num_res_blocks=2, dropout=0.0, conditional=True,
                 resamp_with_conv=True, nonlinearity="swish", scale_by_sigma=False)
_REQUIRED = dict(conditional=True, resamp_with_conv=True, nonlinearity="swish",
                 scale_by_sigma=False)


def _as_dict(obj) -> dict:
    if obj is None:
        return {}
    if isinstance(obj, Mapping):
        return dict(obj)
    state = getattr(obj, "state", None)  # torch_files.PickledObject: a Namespace / dataclass record
    if hasattr(obj, "class_name") and isinstance(state, Mapping):
        return dict(state)
    return dict(getattr(obj, "__dict__", {}))


def _ints(value) -> tuple[int, ...]:
    if isinstance(value, str):  # their str2tuple: "1,2,2,2"
        return tuple(int(v) for v in value.split(",") if v.strip())
    if isinstance(value, (int, np.integer)):
        return (int(value),)
    return tuple(int(v) for v in value)


def architecture(args: Any) -> dict:
    """The network's hyper-parameters from their `args` (Namespace-like or nested dict with `model`
    and `train` parts, or a flat dict of the model options); missing options take parse_utils'
    defaults. Returns {image_size, in_channels, dim, dim_mults, attn_resolutions, num_res_blocks,
    dropout, train_size, iterations?}; raises MappingError for settings diffmem cannot represent."""
    top = _as_dict(args)
    model = _as_dict(top.get("model")) or {k: v for k, v in top.items() if k in _DEFAULTS}
    train = _as_dict(top.get("train"))
    hp = dict(_DEFAULTS, **{k: v for k, v in model.items() if k in _DEFAULTS})
    for key, want in _REQUIRED.items():
        value = hp[key]
        if (str(value).lower() if isinstance(want, str) else bool(value)) != want:
            raise MappingError(f"{WHO}: model.{key} = {value!r}; diffmem's DDPMUNet has only "
                               f"{key} = {want!r}.")
    for key, want in (("prediction_type", "epsilon"), ("beta_schedule", "linear")):
        if key in train and str(train[key]) != want:
            raise MappingError(f"{WHO}: train.{key} = {train[key]!r}; only {want!r} is supported.")
    out = dict(image_size=int(hp["image_size"]), in_channels=int(hp["in_channels"]),
               dim=int(hp["dim"]),
               dim_mults=_ints(hp["dim_mults"]), attn_resolutions=_ints(hp["attn_resolutions"]),
               num_res_blocks=int(hp["num_res_blocks"]), dropout=float(hp["dropout"]))
    if "train_size" in train:
        out["train_size"] = int(train["train_size"])
    return out


def _block(prefix: str, name: str, cin: int, cout: int) -> list[Entry]:
    p = ("params", name)
    out = [Entry(f"{prefix}.GroupNorm_0.weight", p + ("norm1", "scale"), "same"),
           Entry(f"{prefix}.GroupNorm_0.bias", p + ("norm1", "bias"), "same"),
           Entry(f"{prefix}.Conv_0.weight", p + ("conv1", "kernel"), "conv"),
           Entry(f"{prefix}.Conv_0.bias", p + ("conv1", "bias"), "same"),
           Entry(f"{prefix}.Dense_0.weight", p + ("temb_proj", "kernel"), "linear"),
           Entry(f"{prefix}.Dense_0.bias", p + ("temb_proj", "bias"), "same"),
           Entry(f"{prefix}.GroupNorm_1.weight", p + ("norm2", "scale"), "same"),
           Entry(f"{prefix}.GroupNorm_1.bias", p + ("norm2", "bias"), "same"),
           Entry(f"{prefix}.Conv_1.weight", p + ("conv2", "kernel"), "conv"),
           Entry(f"{prefix}.Conv_1.bias", p + ("conv2", "bias"), "same")]
    if cin != cout:
        out += [Entry(f"{prefix}.NIN_0.W", p + ("skip", "kernel"), "same"),
                Entry(f"{prefix}.NIN_0.b", p + ("skip", "bias"), "same")]
    return out


def _attn(prefix: str, name: str) -> list[Entry]:
    p = ("params", name)
    out = [Entry(f"{prefix}.GroupNorm_0.weight", p + ("norm", "scale"), "same"),
           Entry(f"{prefix}.GroupNorm_0.bias", p + ("norm", "bias"), "same")]
    for i, dst in enumerate(("q", "k", "v", "proj_out")):
        out += [Entry(f"{prefix}.NIN_{i}.W", p + (dst, "kernel"), "same"),
                Entry(f"{prefix}.NIN_{i}.b", p + (dst, "bias"), "same")]
    return out


def entries(hp: Mapping) -> list[Entry]:
    """The map of a network with hyper-parameters `hp` (`architecture`), in their module order."""
    nf, mults, nrb = hp["dim"], hp["dim_mults"], hp["num_res_blocks"]
    res_at = [hp["image_size"] >> i for i in range(len(mults))]
    out: list[Entry] = []
    idx, n_res, n_attn = 0, 0, 0

    def module(kind: str, *args):
        nonlocal idx, n_res, n_attn
        prefix = f"all_modules.{idx}"
        idx += 1
        if kind == "res":
            out.extend(_block(prefix, f"ResBlock_{n_res}", *args))
            n_res += 1
        elif kind == "attn":
            out.extend(_attn(prefix, f"AttnBlock_{n_attn}"))
            n_attn += 1
        elif kind in ("linear", "conv"):
            out.extend([Entry(f"{prefix}.weight", ("params", args[0], "kernel"), kind),
                        Entry(f"{prefix}.bias", ("params", args[0], "bias"), "same")])
        elif kind == "norm":
            out.extend([Entry(f"{prefix}.weight", ("params", args[0], "scale"), "same"),
                        Entry(f"{prefix}.bias", ("params", args[0], "bias"), "same")])
        else:  # "resample": Downsample / Upsample with their Conv_0
            out.extend([Entry(f"{prefix}.Conv_0.weight", ("params", args[0], "kernel"), "conv"),
                        Entry(f"{prefix}.Conv_0.bias", ("params", args[0], "bias"), "same")])

    module("linear", "temb_0")
    module("linear", "temb_1")
    module("conv", "conv_in")
    chans, cin = [nf], nf
    for level, m in enumerate(mults):
        for _ in range(nrb):
            module("res", cin, nf * m)
            cin = nf * m
            if res_at[level] in hp["attn_resolutions"]:
                module("attn")
            chans.append(cin)
        if level != len(mults) - 1:
            module("resample", f"down_{level}")
            chans.append(cin)
    module("res", cin, cin)
    module("attn")
    module("res", cin, cin)
    for level, m in reversed(list(enumerate(mults))):
        for _ in range(nrb + 1):
            module("res", cin + chans.pop(), nf * m)
            cin = nf * m
            if res_at[level] in hp["attn_resolutions"]:
                module("attn")
        if level != 0:
            module("resample", f"up_{level}")
    module("norm", "norm_out")
    module("conv", "conv_out")
    return out


def _module_kind(names: set) -> str:
    """What an all_modules entry is, from its parameters' first names."""
    if "NIN_3" in names:
        return "attn"
    if "Dense_0" in names:
        return "res"
    return "resample" if names == {"Conv_0"} else "plain"


def infer_args(state: Mapping[str, np.ndarray], image_size: int) -> dict:
    """The architecture of a bare state dict, read off its keys and shapes (the image size, which
    the weights do not fix, from the caller): module kinds follow from their parameter names."""
    kinds: dict[int, set] = {}
    for key in state:
        if key == "sigmas":  # score_sde's noise-level buffer (see from_state)
            continue
        m = re.fullmatch(r"all_modules\.(\d+)\.(.+)", key)
        if m is None:
            raise MappingError(f"{WHO}: tensor {key!r} is not an all_modules.<i> parameter of "
                               "their DDPM UNet.")
        kinds.setdefault(int(m.group(1)), set()).add(m.group(2).split(".")[0])
    kind = [_module_kind(kinds[i]) for i in sorted(kinds)]
    try:
        dim = int(state["all_modules.2.weight"].shape[0])
        n_res, n_resample = kind.count("res"), kind.count("resample")
        levels = n_resample // 2 + 1
        nrb = ((n_res - 2) // levels - 1) // 2
        level, seen, i, mults, attn = 0, 0, 3, [], set()
        while True:
            if kind[i] == "res":
                if seen == 0:
                    mults.append(int(state[f"all_modules.{i}.Conv_0.weight"].shape[0]) // dim)
                seen += 1
            elif kind[i] == "attn":
                attn.add(image_size >> level)
            elif kind[i] == "resample":
                level, seen = level + 1, 0
            i += 1
            if level == levels - 1 and seen == nrb and kind[i] != "attn":
                break
    except (KeyError, IndexError) as e:
        raise MappingError(f"{WHO}: cannot read the architecture off the keys (at {e}); pass "
                           "their args.") from None
    return dict(image_size=int(image_size), in_channels=int(state["all_modules.2.weight"].shape[1]),
                dim=dim, dim_mults=tuple(mults), attn_resolutions=tuple(sorted(attn)),
                num_res_blocks=int(nrb), dropout=0.0)


def _config(hp: Mapping) -> tuple[dict, dict, dict]:
    from diffmem import image_configs as ic
    model = ic.model_section("ddpm_unet", channels=hp["dim"], channel_mult=hp["dim_mults"],
                             num_blocks=hp["num_res_blocks"],
                             attn_resolutions=hp["attn_resolutions"], dropout=hp["dropout"],
                             num_groups=32, nin_init_scale=0.1)
    return model, ic.diffusion_section("ddpm"), ic.sample_section("ddpm", num=1500, batch=256)


def _shapes(model_section: dict, hp: Mapping):
    import ml_collections

    from diffmem import builders
    size, ch = hp["image_size"], hp["in_channels"]
    net = builders.build_model(ml_collections.ConfigDict(dict(model=model_section)), (size, size,
                                                                                      ch))
    return template(net, (1, size, size, ch), (1,))


def from_state(state: Mapping[str, np.ndarray], args: Any = None, *, image_size: int | None = None,
               step: int = 1) -> ImportedModel:
    """Map their EMA state dict (dotted keys, torch layout) onto DDPMUNet variables.

    args: their `args` (or None: the architecture is inferred from the keys, `image_size` required).
    """
    if args is None:
        if image_size is None:
            raise MappingError(f"{WHO}: the file has no args; give the image size (--image_size).")
        hp = infer_args(state, image_size)
    else:
        hp = architecture(args)
        if image_size is not None and image_size != hp["image_size"]:
            raise MappingError(f"{WHO}: args say image_size {hp['image_size']}, not {image_size}.")
    model, diffusion, sample = _config(hp)
    ignore = {"sigmas": "score_sde's noise-level buffer, unused without scale_by_sigma"}
    variables = to_flax(state, entries(hp), _shapes(model, hp), WHO, ignore)
    info = dict(format="pham", architecture={k: list(v) if isinstance(v, tuple) else v for k,
                                             v in hp.items()})
    return ImportedModel(model=model, diffusion=diffusion, sample=sample, variables=variables,
                         image_shape=(hp["image_size"], hp["image_size"], hp["in_channels"]),
                         step=max(1, int(step)), source_info=info)


def to_state(variables: Mapping, hp: Mapping) -> dict[str, np.ndarray]:
    """Their state dict (module order, torch layout) of DDPMUNet variables with hyper-parameters
    `hp` (the keys of `architecture`'s result). The inverse of `from_state`."""
    return from_flax(variables, entries(hp), WHO)


def read(path: str, *, image_size: int | None = None) -> ImportedModel:
    """Import a checkpoint file written by their train_unet.py (a torch zip: {model, ema, opt, args,
    iterations}; the EMA weights are used) or a bare state dict file."""
    from diffmem.importers import torch_files
    obj = torch_files.read_torch_file(path)
    if isinstance(obj, Mapping) and "ema" in obj:
        state, args, step = obj["ema"], obj.get("args"), obj.get("iterations", 1)
    else:
        state, args, step = obj, None, 1
    state = torch_files.strip_prefix(torch_files.flatten_state_dict(state))
    del obj  # the rest of a training checkpoint (their model, Adam moments) goes before the map
    return from_state(state, args, image_size=image_size, step=int(step or 1))
