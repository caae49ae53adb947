"""diffusers `UNet2DModel` folders (`save_pretrained`: config.json +
diffusion_pytorch_model.safetensors, or the older .bin) of Ho et al.'s DDPM layout
(google/ddpm-cifar10-32 and the like) <-> diffmem's `nets.DDPMUNet` (`model.name = "ddpm_unet"`).

    diffusers                                      diffmem                       layout
    time_embedding.linear_1 / linear_2             temb_0 / temb_1               linear
    conv_in, conv_out                              conv_in, conv_out             conv
    down_blocks.i.resnets.j / up_blocks.u.resnets.j / mid_block.resnets.j
                                                   ResBlock_n (in that order)
      norm1, conv1, time_emb_proj, norm2, conv2   norm1, conv1, temb_proj, norm2, conv2
      conv_shortcut (1x1 conv, when widths differ)  skip (a Dense)             conv1x1
    *.attentions.j (group_norm, to_q, to_k, to_v, to_out.0; old files: query, key, value, proj_attn)
                                                   AttnBlock_n: norm, q, k, v, proj_out   linear
    down_blocks.i.downsamplers.0.conv              down_i                        conv
    up_blocks.u.upsamplers.0.conv                  up_(L-1-u)                    conv
    conv_norm_out                                  norm_out (weight -> scale)    same

Both count ResBlocks and AttnBlocks in the same order (down, middle, up; each block's resnet before
its attention). Output convention: epsilon on integer steps of Ho et al.'s T = 1000 linear betas
(`diffusion.precond = "ddpm"`; a scheduler_config.json beside the model, or in ../scheduler/, is
read for num_train_timesteps / beta_start / beta_end and must be linear).

The mapping is exact for the configs diffmem's DDPMUNet computes the same function as (checked in
`architecture`, else one line naming the setting): Down/AttnDown and Up/AttnUp blocks whose
attention sits at the same resolutions going down and up; time_embedding_type "positional" with
flip_sin_to_cos False and freq_shift 1 (Ho et al.'s [sin, cos] with frequencies 10000^(-j / (half -
1)), diffmem's SinusoidalEmbedding); downsample_padding 0 (diffusers then pads (0, 1) like TF
'SAME', as DDPMUNet does; diffusers' default padding 1 pads (1, 1) and is refused); one attention
head (attention_head_dim None or equal to the width); norm_eps 1e-6; act_fn silu;
resnet_time_scale_shift "default"; no class embedding; center_input_sample False; add_attention
True; conv up/down sampling.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

import numpy as np

from diffmem.importers.tensor_map import (Entry, ImportedModel, MappingError, from_flax, template,
                                          to_flax)

__all__ = ["WHO", "LEGACY_ATTENTION", "architecture", "entries", "export_config", "from_state",
           "to_state", "read"]

WHO = "diffusers UNet2DModel"
LEGACY_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
"""Attention names of files written by old diffusers versions -> the current ones."""
_REQUIRED = dict(time_embedding_type="positional", flip_sin_to_cos=False, freq_shift=1,
                 downsample_padding=0, norm_eps=1e-6, act_fn="silu",
                 resnet_time_scale_shift="default", class_embed_type=None, num_class_embeds=None,
                 center_input_sample=False, add_attention=True, downsample_type="conv",
                 upsample_type="conv", mid_block_scale_factor=1, time_embedding_dim=None,
                 attn_norm_num_groups=None)
_DEFAULTS = dict(_REQUIRED, flip_sin_to_cos=True, freq_shift=0, downsample_padding=1, norm_eps=1e-5,
                 center_input_sample=False, layers_per_block=2, norm_num_groups=32,
                 attention_head_dim=8, dropout=0.0, in_channels=3, out_channels=3, sample_size=None)
_INFO_KEYS = {"_class_name", "_diffusers_version", "_name_or_path", "_use_default_values"}


def architecture(config: Mapping[str, Any]) -> dict:
    """The DDPMUNet hyper-parameters of a diffusers config.json dict: {image_size, in_channels, ch,
    ch_mult, num_res_blocks, attn_resolutions, num_groups, dropout}. Missing fields take
    UNet2DModel's defaults; a setting diffmem's DDPMUNet does not compute is a MappingError naming
    it."""
    c = dict(_DEFAULTS, **{k: v for k, v in config.items() if k not in _INFO_KEYS})
    if c.get("_class_name", config.get("_class_name", "UNet2DModel")) != "UNet2DModel":
        raise MappingError(f"{WHO}: the folder holds a {config.get('_class_name')}, not a "
                           "UNet2DModel.")
    for key, want in _REQUIRED.items():
        if c[key] != want and not (key == "norm_eps" and abs(float(c[key]) - want) < 1e-12):
            raise MappingError(f"{WHO}: config {key} = {c[key]!r}; diffmem's DDPMUNet matches "
                               f"only {want!r}.")
    widths = [int(w) for w in c["block_out_channels"]]
    ch = widths[0]
    if any(w % ch for w in widths):
        raise MappingError(f"{WHO}: block_out_channels {widths} are not multiples of the first.")
    size = c["sample_size"]
    if size is None:
        raise MappingError(f"{WHO}: config.json has no sample_size (the image side length).")
    size = int(size[0] if isinstance(size, (list, tuple)) else size)
    down, up = list(c["down_block_types"]), list(c["up_block_types"])
    levels = len(widths)
    if len(down) != levels or len(up) != levels:
        raise MappingError(f"{WHO}: {len(down)} down / {len(up)} up blocks for {levels} widths.")
    attn_down = {lvl for lvl, t in enumerate(down) if t == "AttnDownBlock2D"}
    attn_up = {levels - 1 - u for u, t in enumerate(up) if t == "AttnUpBlock2D"}
    for t in down + up:
        if t not in ("DownBlock2D", "AttnDownBlock2D", "UpBlock2D", "AttnUpBlock2D"):
            raise MappingError(f"{WHO}: block type {t!r}; only (Attn)DownBlock2D / "
                               "(Attn)UpBlock2D map.")
    if attn_down != attn_up:
        raise MappingError(f"{WHO}: attention at down levels {sorted(attn_down)} but up levels "
                           f"{sorted(attn_up)}; DDPMUNet puts it at the same resolutions both "
                           "ways.")
    heads = c["attention_head_dim"]
    for lvl in sorted(attn_down) + [levels - 1]:
        if heads is not None and int(heads) != widths[lvl]:
            raise MappingError(f"{WHO}: attention_head_dim = {heads} gives several heads at width "
                               f"{widths[lvl]}; DDPMUNet's attention has one head.")
    if int(c["in_channels"]) != int(c["out_channels"]):
        raise MappingError(f"{WHO}: in_channels {c['in_channels']} != out_channels "
                           f"{c['out_channels']}.")
    return dict(image_size=size, in_channels=int(c["in_channels"]), ch=ch,
                ch_mult=tuple(w // ch for w in widths), num_res_blocks=int(c["layers_per_block"]),
                attn_resolutions=tuple(sorted(size >> lvl for lvl in attn_down)),
                num_groups=int(c["norm_num_groups"]), dropout=float(c["dropout"]))


def _resnet(prefix: str, name: str, cin: int, cout: int) -> list[Entry]:
    p = ("params", name)
    out = []
    for src, dst, kind in (("norm1", "norm1", "norm"), ("conv1", "conv1", "conv"),
                           ("time_emb_proj", "temb_proj",
                           "linear"), ("norm2", "norm2", "norm"), ("conv2", "conv2", "conv")):
        out += [Entry(f"{prefix}.{src}.weight", p + (dst, "scale" if kind == "norm" else "kernel"),
                      "same" if kind == "norm" else kind),
                Entry(f"{prefix}.{src}.bias", p + (dst, "bias"), "same")]
    if cin != cout:
        out += [Entry(f"{prefix}.conv_shortcut.weight", p + ("skip", "kernel"), "conv1x1"),
                Entry(f"{prefix}.conv_shortcut.bias", p + ("skip", "bias"), "same")]
    return out


def _attention(prefix: str, name: str) -> list[Entry]:
    p = ("params", name)
    out = [Entry(f"{prefix}.group_norm.weight", p + ("norm", "scale"), "same"),
           Entry(f"{prefix}.group_norm.bias", p + ("norm", "bias"), "same")]
    for src, dst in (("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")):
        out += [Entry(f"{prefix}.{src}.weight", p + (dst, "kernel"), "linear"),
                Entry(f"{prefix}.{src}.bias", p + (dst, "bias"), "same")]
    return out


def entries(hp: Mapping) -> list[Entry]:
    """The map of a UNet2DModel with hyper-parameters `hp` (`architecture`), in diffusers' module
    order."""
    ch, mults, nrb, size = hp["ch"], hp["ch_mult"], hp["num_res_blocks"], hp["image_size"]
    levels = len(mults)
    attn = [(size >> lvl) in hp["attn_resolutions"] for lvl in range(levels)]
    out: list[Entry] = []
    counter = {"res": 0, "attn": 0}

    def plain(src, dst, kind):
        out.extend([Entry(f"{src}.weight", ("params", dst, "scale" if kind == "norm" else "kernel"),
                          "same" if kind == "norm" else kind),
                    Entry(f"{src}.bias", ("params", dst, "bias"), "same")])

    def res(prefix, cin, cout):
        out.extend(_resnet(prefix, f"ResBlock_{counter['res']}", cin, cout))
        counter["res"] += 1

    def att(prefix):
        out.extend(_attention(prefix, f"AttnBlock_{counter['attn']}"))
        counter["attn"] += 1

    plain("time_embedding.linear_1", "temb_0", "linear")
    plain("time_embedding.linear_2", "temb_1", "linear")
    plain("conv_in", "conv_in", "conv")
    chans, cin = [ch], ch
    for lvl, m in enumerate(mults):
        for j in range(nrb):
            res(f"down_blocks.{lvl}.resnets.{j}", cin, ch * m)
            cin = ch * m
            if attn[lvl]:
                att(f"down_blocks.{lvl}.attentions.{j}")
            chans.append(cin)
        if lvl != levels - 1:
            plain(f"down_blocks.{lvl}.downsamplers.0.conv", f"down_{lvl}", "conv")
            chans.append(cin)
    res("mid_block.resnets.0", cin, cin)
    att("mid_block.attentions.0")
    res("mid_block.resnets.1", cin, cin)
    for u, lvl in enumerate(reversed(range(levels))):
        for j in range(nrb + 1):
            res(f"up_blocks.{u}.resnets.{j}", cin + chans.pop(), ch * mults[lvl])
            cin = ch * mults[lvl]
            if attn[lvl]:
                att(f"up_blocks.{u}.attentions.{j}")
        if lvl != 0:
            plain(f"up_blocks.{u}.upsamplers.0.conv", f"up_{lvl}", "conv")
    plain("conv_norm_out", "norm_out", "norm")
    plain("conv_out", "conv_out", "conv")
    return out


def export_config(hp: Mapping) -> dict:
    """The config.json of the UNet2DModel equal to DDPMUNet hyper-parameters `hp` (the inverse of
    `architecture`)."""
    levels = len(hp["ch_mult"])
    attn = [(hp["image_size"] >> lvl) in hp["attn_resolutions"] for lvl in range(levels)]
    return dict(_class_name="UNet2DModel", sample_size=hp["image_size"],
                in_channels=hp["in_channels"], out_channels=hp["in_channels"],
                block_out_channels=[hp["ch"] * m for m in hp["ch_mult"]],
                layers_per_block=hp["num_res_blocks"],
                down_block_types=["AttnDownBlock2D" if a else "DownBlock2D" for a in attn],
                up_block_types=["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
                attention_head_dim=None, norm_num_groups=hp["num_groups"], norm_eps=1e-6,
                act_fn="silu", downsample_padding=0, flip_sin_to_cos=False, freq_shift=1,
                center_input_sample=False, time_embedding_type="positional",
                mid_block_scale_factor=1, dropout=hp.get("dropout", 0.0))


def _renamed(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if "attentions" in parts and len(parts) >= 2 and parts[-2] in LEGACY_ATTENTION:
            key = ".".join(parts[:-2] + [LEGACY_ATTENTION[parts[-2]], parts[-1]])
        out[key] = value
    return out


def _schedule(scheduler: Mapping | None) -> tuple[int, float, float]:
    if not scheduler:
        return 1000, 1e-4, 0.02
    kind = scheduler.get("beta_schedule", "linear")
    if kind != "linear" or scheduler.get("trained_betas") is not None:
        raise MappingError(f"{WHO}: scheduler beta_schedule {kind!r}; diffmem's DDPM grid is "
                           "linear.")
    if scheduler.get("prediction_type", "epsilon") != "epsilon":
        raise MappingError(f"{WHO}: scheduler prediction_type {scheduler['prediction_type']!r}; "
                           "only epsilon.")
    return (int(scheduler.get("num_train_timesteps", 1000)),
            float(scheduler.get("beta_start", 1e-4)), float(scheduler.get("beta_end", 0.02)))


def from_state(state: Mapping[str, np.ndarray], config: Mapping[str, Any],
               scheduler: Mapping[str, Any] | None = None) -> ImportedModel:
    """Map a UNet2DModel state dict (dotted keys, torch layout) with its config.json dict (and
    optional scheduler_config.json dict) onto DDPMUNet variables."""
    import ml_collections

    from diffmem import builders
    from diffmem import image_configs as ic
    hp = architecture(config)
    timesteps, beta_start, beta_end = _schedule(scheduler)
    model = ic.model_section("ddpm_unet", channels=hp["ch"], channel_mult=hp["ch_mult"],
                             num_blocks=hp["num_res_blocks"],
                             attn_resolutions=hp["attn_resolutions"], dropout=hp["dropout"],
                             num_groups=hp["num_groups"])
    diffusion = ic.diffusion_section("ddpm", timesteps=timesteps, beta_start=beta_start,
                                     beta_end=beta_end)
    size, c = hp["image_size"], hp["in_channels"]
    net = builders.build_model(ml_collections.ConfigDict(dict(model=model)), (size, size, c))
    variables = to_flax(_renamed(state), entries(hp), template(net, (1, size, size, c), (1,)), WHO)
    sample = dict(ic.sample_section("ddpm", num=1500, batch=256), num_steps=timesteps)
    info = dict(format="diffusers", architecture={k: list(v) if isinstance(v, tuple) else v for k,
                                                  v in hp.items()},
                diffusers_version=config.get("_diffusers_version"))
    return ImportedModel(model=model, diffusion=diffusion, sample=sample, variables=variables,
                         image_shape=(size, size, c), step=1, source_info=info)


def to_state(variables: Mapping, hp: Mapping) -> dict[str, np.ndarray]:
    """The UNet2DModel state dict (current attention names, torch layout) of DDPMUNet variables; the
    inverse of `from_state` (hp: `architecture(config)`)."""
    return from_flax(variables, entries(hp), WHO)


def _read_json(path: str) -> dict | None:
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise MappingError(f"{WHO}: {path} is not readable JSON ({e}).") from None


def read(path: str) -> ImportedModel:
    """Import a `save_pretrained` folder (or a pipeline folder with a unet/ subfolder): config.json
    and diffusion_pytorch_model.safetensors (or .bin, read as a torch zip without unpickling
    code)."""
    from diffmem.errors import MissingInputError
    folder = os.path.join(path, "unet") if os.path.isdir(os.path.join(path, "unet")) else path
    config = _read_json(os.path.join(folder, "config.json"))
    if config is None:
        raise MissingInputError(f"{WHO}: no config.json in {folder}.")
    scheduler = (_read_json(os.path.join(folder, "scheduler_config.json"))
                 or _read_json(os.path.join(os.path.dirname(os.path.normpath(folder)), "scheduler",
                                            "scheduler_config.json")))
    weights = os.path.join(folder, "diffusion_pytorch_model.safetensors")
    if os.path.exists(weights):
        from diffmem.importers import safetensors_files
        state = safetensors_files.read_safetensors(weights)
    elif os.path.exists(os.path.join(folder, "diffusion_pytorch_model.bin")):
        from diffmem.importers import torch_files
        tree = torch_files.read_torch_file(os.path.join(folder, "diffusion_pytorch_model.bin"))
        state = torch_files.strip_prefix(torch_files.flatten_state_dict(tree))
    else:
        raise MissingInputError(f"{WHO}: no diffusion_pytorch_model.safetensors (or .bin) in "
                                f"{folder}.")
    return from_state(state, config, scheduler)
