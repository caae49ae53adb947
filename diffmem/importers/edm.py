"""EDM network snapshots (Karras et al. 2022, `network-snapshot-*.pkl`; also Gu et al.'s
DiffMemorize, which trains with EDM's loop) <-> diffmem's `nets.SongUNet` (`model.name = "ddpmpp"`)
with its preconditioning.

The snapshot's `ema` is a preconditioning module (EDMPrecond / VPPrecond / VEPrecond) whose `model`
is a SongUNet; its state dict keys are `model.<module>.<param>` with EDM's module names, which
diffmem's SongUNet uses too (`enc.32x32_block0.conv0` is `enc_32x32_block0/conv0`):

    EDM (PyTorch)                                diffmem (Flax)                       layout
    model.map_noise.freqs (fourier only)         map_noise/freqs                      same
    model.map_label.weight (O, label_dim)        map_label/kernel (label_dim, O)      linear
    model.map_layer0/1.weight                    map_layer0/1/kernel                  linear
    model.enc.<res>x<res>_conv.weight (OIHW)     enc_<res>x<res>_conv/kernel (HWIO)   conv
    model.{enc,dec}.<block>.norm0/1/2.weight     <block>/norm0/1/2/scale              same
    model.{enc,dec}.<block>.conv0/conv1/skip/qkv/proj.weight   <block>/.../kernel     conv (1x1 too)
    model.{enc,dec}.<block>.affine.weight        <block>/affine/kernel                linear
    model.{enc,dec}.<block>.{conv0,skip}.resample_filter   (none: diffmem hard-codes [1, 1])  const
    model.dec.<res>x<res>_aux_norm / _aux_conv   dec_<res>x<res>_aux_norm / _aux_conv

The attention's qkv conv keeps EDM's channel order (head, channel, {q, k, v}), which diffmem's
SongBlock splits the same way, so it maps unsplit. Biases map as they are.

Hyper-parameters (the `_init_kwargs` of the preconditioning and of its SongUNet, and the plain
attributes sigma_min, sigma_max, sigma_data, beta_d, beta_min, M, epsilon_t, img_resolution,
img_channels, label_dim), with EDM's SongUNet defaults for what a file leaves out. Supported: EDM's
DDPM++ (SongUNet with encoder_type = decoder_type = "standard", resample_filter [1, 1],
channel_mult_emb 4, channel_mult_noise 1, positional or Fourier noise embedding), unconditional or
class-conditional. Refused in one line: NCSN++ settings (residual / skip encoder, [1, 3, 3, 1]
filter), DhariwalUNet (ADM), iDDPMPrecond.

`map_augment.weight` (EDM's augmentation conditioning, present when augment_dim > 0 as in its
CIFAR-10 runs) is read, checked and not kept: EDM's samplers never pass augment labels, so it does
not change D, and diffmem's model section has no augment_dim. The import records it under `dropped`.

Preconditioning: EDMPrecond -> `diffusion.precond = "edm"` with its sigma_data, and sigma_min /
sigma_max clamped to EDM's sampling range [0.002, 80] (EDMPrecond's own 0 and inf mean "no limit");
VPPrecond -> "vp" (beta_d, beta_min, M, epsilon_t); VEPrecond -> "ve" (sigma_min, sigma_max). D(x,
sigma) is then exactly EDM's, c_noise included.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from diffmem.importers.tensor_map import (Entry, ImportedModel, MappingError, from_flax, template,
                                          to_flax)

__all__ = ["WHO", "PRECONDS", "SONGUNET_DEFAULTS", "architecture", "entries", "from_state",
           "to_state", "export_hparams", "read"]

WHO = "EDM network snapshot"
PRECONDS = {"EDMPrecond": "edm", "VPPrecond": "vp", "VEPrecond": "ve"}
SONGUNET_DEFAULTS = dict(model_channels=128, channel_mult=(1, 2, 2, 2), channel_mult_emb=4,
                         num_blocks=4, attn_resolutions=(16,), dropout=0.10, label_dropout=0.0,
                         embedding_type="positional", channel_mult_noise=1, encoder_type="standard",
                         decoder_type="standard", resample_filter=(1, 1), augment_dim=0)
"""EDM's SongUNet keyword defaults (networks.py)."""
_FIXED = dict(channel_mult_emb=4, channel_mult_noise=1, encoder_type="standard",
              decoder_type="standard", resample_filter=(1, 1))
_PRECOND_DEFAULTS = {"edm": dict(sigma_min=0.0, sigma_max=math.inf, sigma_data=0.5),
                     "vp": dict(beta_d=19.9, beta_min=0.1, M=1000, epsilon_t=1e-5),
                     "ve": dict(sigma_min=0.02, sigma_max=100.0)}
_KNOWN = set(SONGUNET_DEFAULTS) | {f for d in _PRECOND_DEFAULTS.values() for f in d} | {
    "img_resolution", "img_channels", "in_channels", "out_channels", "label_dim", "use_fp16",
    "model_type"}


def _value(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, (list, tuple, np.ndarray)):
        return tuple(_value(x) for x in v)
    return v


def architecture(class_name: str, hparams: Mapping[str, Any]) -> dict:
    """The checked hyper-parameters of a snapshot: {precond, img_resolution, img_channels,
    label_dim, ... SongUNet fields, precond fields}. hparams: the merged init kwargs and attributes
    of the preconditioning and its SongUNet. Raises MappingError on what diffmem cannot
    represent."""
    if class_name not in PRECONDS:
        raise MappingError(f"{WHO}: the network is a {class_name}; supported: {sorted(PRECONDS)}.")
    precond = PRECONDS[class_name]
    hp = {k: _value(v) for k, v in hparams.items()}
    unknown = sorted(set(hp) - _KNOWN)
    if unknown:
        raise MappingError(f"{WHO}: unknown network setting {unknown[0]!r} = {hp[unknown[0]]!r}; "
                           "diffmem's SongUNet may not match it.")
    model_type = hp.get("model_type", "SongUNet" if precond != "edm" else "DhariwalUNet")
    if model_type != "SongUNet":
        raise MappingError(f"{WHO}: model_type {model_type!r}; only SongUNet (DDPM++) maps onto "
                           "diffmem.")
    out = dict(SONGUNET_DEFAULTS, precond=precond)
    out.update({k: hp[k] for k in SONGUNET_DEFAULTS if k in hp})
    for key, want in _FIXED.items():
        if out[key] != want:
            raise MappingError(f"{WHO}: {key} = {out[key]!r}; diffmem's SongUNet has only {key} = "
                               f"{want!r} (EDM's DDPM++).")
    if out["embedding_type"] not in ("positional", "fourier"):
        raise MappingError(f"{WHO}: embedding_type {out['embedding_type']!r} is not positional or "
                           "fourier.")
    for key in ("img_resolution", "img_channels"):
        if key not in hp:
            raise MappingError(f"{WHO}: the network records no {key}.")
    for key in ("in_channels", "out_channels"):
        if hp.get(key, hp["img_channels"]) != hp["img_channels"]:
            raise MappingError(f"{WHO}: {key} = {hp[key]} differs from img_channels = "
                               f"{hp['img_channels']}.")
    out.update(img_resolution=int(hp["img_resolution"]), img_channels=int(hp["img_channels"]),
               label_dim=int(hp.get("label_dim", 0) or 0), use_fp16=bool(hp.get("use_fp16", False)))
    out.update({k: hp.get(k, d) for k, d in _PRECOND_DEFAULTS[precond].items()})
    out["channel_mult"] = tuple(int(m) for m in out["channel_mult"])
    out["attn_resolutions"] = tuple(int(r) for r in out["attn_resolutions"])
    return out


def _block(prefix: str, name: str, *, resample: bool, skip: bool, attention: bool) -> list[Entry]:
    p = ("params", name)
    filt = np.full((1, 1, 2, 2), 0.25, np.float32)  # EDM's [1, 1] filter: outer([1, 1]) / 2^2
    out = [Entry(f"{prefix}.norm0.weight", p + ("norm0", "scale"), "same"),
           Entry(f"{prefix}.norm0.bias", p + ("norm0", "bias"), "same"),
           Entry(f"{prefix}.conv0.weight", p + ("conv0", "kernel"), "conv"),
           Entry(f"{prefix}.conv0.bias", p + ("conv0", "bias"), "same")]
    if resample:
        out.append(Entry(f"{prefix}.conv0.resample_filter", (), "const", filt))
    out += [Entry(f"{prefix}.affine.weight", p + ("affine", "kernel"), "linear"),
            Entry(f"{prefix}.affine.bias", p + ("affine", "bias"), "same"),
            Entry(f"{prefix}.norm1.weight", p + ("norm1", "scale"), "same"),
            Entry(f"{prefix}.norm1.bias", p + ("norm1", "bias"), "same"),
            Entry(f"{prefix}.conv1.weight", p + ("conv1", "kernel"), "conv"),
            Entry(f"{prefix}.conv1.bias", p + ("conv1", "bias"), "same")]
    if skip:
        out += [Entry(f"{prefix}.skip.weight", p + ("skip", "kernel"), "conv"),
                Entry(f"{prefix}.skip.bias", p + ("skip", "bias"), "same")]
        if resample:
            out.append(Entry(f"{prefix}.skip.resample_filter", (), "const", filt))
    if attention:
        for sub in ("norm2", "qkv", "proj"):
            norm = sub.startswith("norm")
            out += [Entry(f"{prefix}.{sub}.weight", p + (sub, "scale" if norm else "kernel"),
                          "same" if norm else "conv"),
                    Entry(f"{prefix}.{sub}.bias", p + (sub, "bias"), "same")]
    return out


def entries(hp: Mapping) -> list[Entry]:
    """The map of a snapshot with checked hyper-parameters `hp` (`architecture`), in EDM's module
    order."""
    mc, mults, nb, attn = (hp["model_channels"], hp["channel_mult"], hp["num_blocks"],
                           hp["attn_resolutions"])
    res0 = hp["img_resolution"]
    out: list[Entry] = []

    def dense(src, dst, kind="linear"):
        out.extend([Entry(f"model.{src}.weight", ("params", dst, "kernel"), kind),
                    Entry(f"model.{src}.bias", ("params", dst, "bias"), "same")])

    if hp["embedding_type"] == "fourier":
        out.append(Entry("model.map_noise.freqs", ("params", "map_noise", "freqs"), "same"))
    if hp["label_dim"]:
        dense("map_label", "map_label")
    dense("map_layer0", "map_layer0")
    dense("map_layer1", "map_layer1")
    cout, widths = hp["img_channels"], []
    for level, mult in enumerate(mults):
        r = res0 >> level
        if level == 0:
            cout = mc
            dense(f"enc.{r}x{r}_conv", f"enc_{r}x{r}_conv", "conv")
        else:
            out.extend(_block(f"model.enc.{r}x{r}_down", f"enc_{r}x{r}_down", resample=True,
                              skip=True, attention=False))
        widths.append(cout)
        for idx in range(nb):
            cin, cout = cout, mc * mult
            out.extend(_block(f"model.enc.{r}x{r}_block{idx}", f"enc_{r}x{r}_block{idx}",
                              resample=False, skip=cin != cout, attention=r in attn))
            widths.append(cout)
    for level, mult in reversed(list(enumerate(mults))):
        r = res0 >> level
        if level == len(mults) - 1:
            out.extend(_block(f"model.dec.{r}x{r}_in0", f"dec_{r}x{r}_in0", resample=False,
                              skip=False, attention=True))
            out.extend(_block(f"model.dec.{r}x{r}_in1", f"dec_{r}x{r}_in1", resample=False,
                              skip=False, attention=False))
        else:
            out.extend(_block(f"model.dec.{r}x{r}_up", f"dec_{r}x{r}_up", resample=True, skip=True,
                              attention=False))
        for idx in range(nb + 1):
            cin, cout = cout + widths.pop(), mc * mult
            out.extend(_block(f"model.dec.{r}x{r}_block{idx}", f"dec_{r}x{r}_block{idx}",
                              resample=False, skip=cin != cout, attention=idx == nb and r in attn))
    src, norm = f"model.dec.{res0}x{res0}_aux_norm", f"dec_{res0}x{res0}_aux_norm"
    out.extend([Entry(f"{src}.weight", ("params", norm, "scale"), "same"),
                Entry(f"{src}.bias", ("params", norm, "bias"), "same")])
    dense(f"dec.{res0}x{res0}_aux_conv", f"dec_{res0}x{res0}_aux_conv", "conv")
    return out


def _config(hp: Mapping) -> tuple[dict, dict, dict]:
    from diffmem import image_configs as ic
    model = ic.model_section("ddpmpp", channels=hp["model_channels"],
                             channel_mult=hp["channel_mult"], num_blocks=hp["num_blocks"],
                             attn_resolutions=hp["attn_resolutions"], dropout=float(hp["dropout"]),
                             embedding_type=hp["embedding_type"], label_dim=hp["label_dim"])
    diffusion = ic.diffusion_section(hp["precond"])
    fields = diffusion["precond_fields"]
    if hp["precond"] == "edm":
        fields.update(sigma_data=float(hp["sigma_data"]), sigma_min=max(float(hp["sigma_min"]),
                                                                        0.002),
                      sigma_max=min(float(hp["sigma_max"]), 80.0))
    else:
        names = _PRECOND_DEFAULTS[hp["precond"]]
        fields.update({k: (int(hp[k]) if k == "M" else float(hp[k])) for k in names})
    return model, diffusion, ic.sample_section(hp["precond"], num=1500, batch=256)


def _shapes(model_section: dict, hp: Mapping):
    import ml_collections

    from diffmem import builders
    size, ch = hp["img_resolution"], hp["img_channels"]
    net = builders.build_model(ml_collections.ConfigDict(dict(model=model_section)), (size, size,
                                                                                      ch))
    return template(net, (1, size, size, ch), (1,))


def _with_prefix(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Keys as the preconditioning's state dict has them (`model.` first); a SongUNet's own state
    dict (no prefix) is accepted too."""
    if any(k.startswith("model.") for k in state):
        return dict(state)
    return {f"model.{k}": v for k, v in state.items()}


def from_state(state: Mapping[str, np.ndarray], class_name: str, hparams: Mapping[str, Any], *,
               step: int = 1) -> ImportedModel:
    """Map a snapshot's state dict (dotted keys, torch layout) onto SongUNet variables.

    class_name: the preconditioning's class (`PRECONDS`); hparams: its and its SongUNet's init
    kwargs and attributes (see `architecture`)."""
    hp = architecture(class_name, hparams)
    state = _with_prefix(state)
    model, diffusion, sample = _config(hp)
    ignore = {}
    if hp["augment_dim"]:
        w = np.asarray(state.get("model.map_augment.weight", np.zeros(0)))
        want = (hp["model_channels"] * hp["channel_mult_noise"], hp["augment_dim"])
        if w.shape != want:
            raise MappingError(f"{WHO}: tensor 'model.map_augment.weight' has shape {w.shape}; "
                               f"augment_dim = {hp['augment_dim']} needs {want}.")
        ignore["model.map_augment.weight"] = "augmentation labels: EDM's samplers never pass them"
    # `state` is this function's own dict (`_with_prefix`): consumed as it is mapped
    variables = to_flax(state, entries(hp), _shapes(model, hp), WHO, ignore, consume=True)
    del state
    info = dict(format="edm", class_name=class_name,
                architecture={k: list(v) if isinstance(v, tuple) else v for k, v in hp.items()
                              if not (isinstance(v, float) and math.isinf(v))})
    dropped = tuple(f"{k} ({why})" for k, why in ignore.items())
    return ImportedModel(model=model, diffusion=diffusion, sample=sample, variables=variables,
                         image_shape=(hp["img_resolution"], hp["img_resolution"],
                                      hp["img_channels"]),
                         step=max(1, int(step)), source_info=info, dropped=dropped)


def export_hparams(model_section: Mapping, diffusion: Mapping, image_shape: tuple[int, int, int]
                   ) -> tuple[str, dict]:
    """(class name, hyper-parameters) of the EDM network equal to a diffmem ddpmpp config: the
    inverse of `architecture` (what an EDM file's init kwargs and attributes would say)."""
    precond = diffusion["precond"]
    class_name = {v: k for k, v in PRECONDS.items()}[precond]
    m = model_section
    hp = dict(model_type="SongUNet", img_resolution=int(image_shape[0]),
              img_channels=int(image_shape[2]),
              label_dim=int(m.get("label_dim", 0) or 0), model_channels=int(m["channels"]),
              channel_mult=tuple(m["channel_mult"]), num_blocks=int(m["num_blocks"]),
              attn_resolutions=tuple(m["attn_resolutions"]), dropout=float(m["dropout"]),
              embedding_type=m.get("embedding_type", "positional"), channel_mult_noise=1,
              encoder_type="standard", decoder_type="standard", resample_filter=(1, 1))
    hp.update({k: v for k, v in dict(diffusion.get("precond_fields") or {}).items()
               if k in _PRECOND_DEFAULTS[precond]})
    return class_name, hp


def to_state(variables: Mapping, class_name: str, hparams: Mapping[str, Any]) -> dict[str,
                                                                                      np.ndarray]:
    """The snapshot state dict (EDM's module order and layout, `model.` prefix, resample filters
    included) of SongUNet variables. The inverse of `from_state`."""
    return from_flax(variables, entries(architecture(class_name, hparams)), WHO)


def read(path: str) -> ImportedModel:
    """Import an EDM network pickle (its `ema` network), through the restricted reader of
    `diffmem.importers.torch_files` (nothing in the file is executed)."""
    import os
    import re

    from diffmem.importers import torch_files
    net = torch_files.read_edm_pickle(path)
    kimg = re.search(r"(\d+)", os.path.basename(str(path)))  # network-snapshot-<kimg>.pkl
    # the state dict is handed over (popped), so from_state frees each tensor as it maps it
    return from_state(net.pop("state_dict"), net["class_name"], net["hparams"],
                      step=int(kimg.group(1)) if kimg else 1)
