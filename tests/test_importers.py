"""Bring your own model: the network maps of diffmem.importers (EDM, Pham et al., diffusers,
Kadkhodaie et al.) checked against the documented upstream layouts, exact round trips through the
real file formats, numpy re-statements of upstream blocks, bad inputs, and imported workdirs that
sample like trained ones."""
from __future__ import annotations

import collections
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
import pytest

from diffmem import nets
from diffmem.importers import diffusers as dif
from diffmem.importers import edm, kadkhodaie, pham, workdir_writer
from diffmem.importers import safetensors_files as sf
from diffmem.importers import torch_writers as tw
from diffmem.errors import InputError, OutputExistsError
from diffmem.importers.tensor_map import MappingError, flatten_variables, from_flax, template
from diffmem.importers.torch_files import PickledObject

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _random_variables(net, x_shape, *call_shapes, seed=0, extra=()):
    """Variables of `net` with every leaf random (no init: eval_shape only, so nothing compiles);
    extra: further positional arguments of the call (a block's `train`)."""
    rng = np.random.default_rng(seed)
    if extra:
        args = [jnp.zeros(s, jnp.float32) for s in (x_shape,) + call_shapes]
        shapes = jax.eval_shape(lambda: net.init(jax.random.key(0), *args, *extra))
        shapes = {p: tuple(a.shape) for p, a in flatten_variables(shapes).items()}
    else:
        shapes = template(net, x_shape, *call_shapes)
    flat = {p: rng.normal(size=s).astype(np.float32) for p, s in shapes.items()}
    return traverse_util.unflatten_dict(flat)


def _equal_trees(a, b) -> bool:
    fa, fb = flatten_variables(a), flatten_variables(b)
    return fa.keys() == fb.keys() and all(np.array_equal(fa[k], fb[k]) for k in fa)


def _one_line(err, *names):
    msg = str(err.value)
    assert "\n" not in msg and all(n in msg for n in names), msg


def _module_tree(state: dict, name="Module", persistent=False, **attrs):
    """A torch module tree (torch_files.PickledObject records) holding a flat state dict."""
    children, leaves = collections.OrderedDict(), collections.OrderedDict()
    for key, value in state.items():
        head, dot, rest = key.partition(".")
        if dot:
            children.setdefault(head, collections.OrderedDict())[rest] = value
        else:
            leaves[head] = value
    buffers = {k: v for k, v in leaves.items() if k in ("resample_filter", "running_sd", "freqs")}
    params = {k: tw.Parameter(v) for k, v in leaves.items() if k not in buffers}
    modules = collections.OrderedDict((k, _module_tree(v, persistent=persistent))
                                      for k, v in children.items())
    module_state = {"training": False, "_parameters": collections.OrderedDict(params),
                    "_buffers": collections.OrderedDict(buffers),
                    "_non_persistent_buffers_set": set(), "_modules": modules, **attrs}
    return PickledObject(name, module_state, kind="persistent" if persistent else "object",
                         source="raise SystemExit(3)\n" if persistent else None)


# ---------------------------------------------------------------------------------------------- EDM
EDM_MODEL = dict(channels=16, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,), dropout=0.0,
                 embedding_type="positional", label_dim=3)
EDM_DIFFUSION = dict(precond="edm", precond_fields=dict(sigma_data=0.5, sigma_min=0.002,
                                                        sigma_max=80.0))


def _edm_case():
    net = nets.SongUNet(model_channels=16, channel_mult=(1, 2), num_blocks=1,
                        attn_resolutions=(4,), label_dim=3)
    v = _random_variables(net, (1, 8, 8, 3), (1,))
    cls, hp = edm.export_hparams(EDM_MODEL, EDM_DIFFUSION, (8, 8, 3))
    return net, v, cls, hp


def test_edm_layout_matches_edm_networks():
    _, v, cls, hp = _edm_case()
    st = edm.to_state(v, cls, hp)
    p = v["params"]
    assert list(st)[:4] == ["model.map_label.weight", "model.map_label.bias",
                            "model.map_layer0.weight", "model.map_layer0.bias"]
    assert st["model.map_label.weight"].shape == (16, 3)  # Linear (out, in)
    np.testing.assert_array_equal(st["model.map_layer1.weight"], p["map_layer1"]["kernel"].T)
    w = st["model.enc.8x8_conv.weight"]  # Conv2d OIHW
    assert w.shape == (16, 3, 3, 3)
    np.testing.assert_array_equal(w[5, 2, 0, 1], p["enc_8x8_conv"]["kernel"][0, 1, 2, 5])
    # one 1x1 conv, EDM's (head, channel, qkv) channel order kept
    qkv = st["model.enc.4x4_block0.qkv.weight"]
    assert qkv.shape == (96, 32, 1, 1)
    np.testing.assert_array_equal(qkv[:, :, 0, 0], p["enc_4x4_block0"]["qkv"]["kernel"][0, 0].T)
    np.testing.assert_array_equal(st["model.enc.4x4_block0.norm2.weight"],
                                  p["enc_4x4_block0"]["norm2"]["scale"])
    for key in ("model.enc.4x4_down.conv0.resample_filter",
                "model.dec.8x8_up.skip.resample_filter"):
        np.testing.assert_array_equal(st[key], np.full((1, 1, 2, 2), 0.25, np.float32))
    assert "model.enc.8x8_block0.skip.weight" not in st  # same width, no resampling: no skip conv
    assert st["model.dec.4x4_block0.skip.weight"].shape == (32, 64, 1, 1)
    assert list(st)[-1] == "model.dec.8x8_aux_conv.bias"


def _edm_pickle(tmp_path):
    """An EDM snapshot file (EDMPrecond around a small conditional SongUNet with augment_dim 9, as
    EDM's CIFAR-10 runs) written with the format layer's writer; returns (path, variables, state
    dict)."""
    _, v, cls, hp = _edm_case()
    st = edm.to_state(v, cls, hp)
    aug = np.random.default_rng(3).normal(size=(16, 9)).astype(np.float32)
    full = collections.OrderedDict(list(st.items())[:2] + [("model.map_augment.weight", aug)]
                                   + list(st.items())[2:])
    unet = _module_tree({k[len("model."):]: a for k, a in full.items()}, "SongUNet", True,
                        _init_args=(),
                        _init_kwargs=dict(img_resolution=8, in_channels=3, out_channels=3,
                                          label_dim=3, augment_dim=9, model_channels=16,
                                          channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4],
                                          dropout=0.13))
    ema = _module_tree({}, "EDMPrecond", True, sigma_min=0.0, sigma_max=float("inf"),
                       sigma_data=0.5, img_resolution=8, img_channels=3, label_dim=3,
                       use_fp16=False, _init_args=(),
                       _init_kwargs=dict(img_resolution=8, img_channels=3, label_dim=3,
                                         model_type="SongUNet", embedding_type="positional",
                                         encoder_type="standard", decoder_type="standard",
                                         channel_mult_noise=1, resample_filter=[1, 1],
                                         model_channels=16, channel_mult=[1, 2], augment_dim=9,
                                         dropout=0.13))
    ema.state["_modules"]["model"] = unet
    path = tw.write_network_pickle(tmp_path / "network-snapshot-000200.pkl",
                                   {"ema": ema, "loss_fn": None, "augment_pipe": None,
                                    "dataset_kwargs": {}})
    return path, v, st


def test_edm_pickle_round_trip_and_dropped_augment(tmp_path):
    path, v, st = _edm_pickle(tmp_path)
    imp = edm.read(path)
    assert _equal_trees(imp.variables, v) and imp.step == 200
    assert imp.model["dropout"] == 0.13 and imp.model["label_dim"] == 3
    # EDMPrecond's own 0 / inf: EDM's sampling range
    assert imp.diffusion["precond_fields"]["sigma_min"] == 0.002
    assert imp.diffusion["precond_fields"]["sigma_max"] == 80.0
    assert len(imp.dropped) == 1 and "map_augment" in imp.dropped[0]
    back = edm.to_state(imp.variables, *edm.export_hparams(imp.model, imp.diffusion,
                                                           imp.image_shape))
    assert list(back) == list(st) and all(np.array_equal(back[k], st[k]) for k in st)


def test_edm_refuses_what_diffmem_cannot_represent():
    _, v, cls, hp = _edm_case()
    st = edm.to_state(v, cls, hp)
    with pytest.raises(MappingError) as e:
        edm.from_state(st, cls, dict(hp, encoder_type="residual"))
    _one_line(e, "encoder_type")
    with pytest.raises(MappingError) as e:
        edm.from_state(st, "iDDPMPrecond", hp)
    _one_line(e, "iDDPMPrecond")



@pytest.mark.parametrize("precond, fields", [
    ("vp", dict(beta_d=19.9, beta_min=0.1, M=1000, epsilon_t=1e-5)),
    ("ve", dict(sigma_min=0.02, sigma_max=100.0))])
def test_edm_vp_and_ve_preconditionings_keep_their_fields(precond, fields):
    from diffmem import builders
    _, v, _, _ = _edm_case()
    cls, hp = edm.export_hparams(EDM_MODEL, dict(precond=precond, precond_fields=fields), (8, 8, 3))
    assert cls == {"vp": "VPPrecond", "ve": "VEPrecond"}[precond]
    imp = edm.from_state(edm.to_state(v, cls, hp), cls, hp)
    assert imp.diffusion["precond"] == precond and imp.diffusion["precond_fields"] == fields
    data = dict(name="images", source="digits", k=1, subset="permutation", subset_seed=0,
                split="train", image_size=0, center_crop=False, grayscale=False, data_dir="",
                labels="none")
    config = workdir_writer.build_config(imp, data)  # validated against the schema
    assert builders.sigma_range(config)[1] == pytest.approx(
        100.0 if precond == "ve" else 152.16697, rel=1e-5)

# --------------------------------------------------------------------------------------------- Pham
PHAM_HP = dict(image_size=8, in_channels=3, dim=32, dim_mults=(1, 2), attn_resolutions=(4,),
               num_res_blocks=1, dropout=0.0)


def _pham_case():
    net = nets.DDPMUNet(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                        nin_init_scale=0.1)
    return net, _random_variables(net, (1, 8, 8, 3), (1,), seed=1)


def test_pham_layout_matches_their_all_modules_list():
    _, v = _pham_case()
    st = pham.to_state(v, PHAM_HP)
    p = v["params"]
    # 0, 1: time embedding Linears; 2: conv_in; 3: ResnetBlockDDPM (32 -> 32); 4: Downsample;
    # 5: ResnetBlockDDPM (32 -> 64, NIN shortcut); 6: AttnBlock at 4 px; 7-9: middle; ...
    assert st["all_modules.0.weight"].shape == (128, 32)
    assert st["all_modules.2.weight"].shape == (32, 3, 3, 3)
    assert "all_modules.3.NIN_0.W" not in st and st["all_modules.5.NIN_0.W"].shape == (32, 64)
    np.testing.assert_array_equal(st["all_modules.5.NIN_0.W"],
                                  p["ResBlock_1"]["skip"]["kernel"])  # NIN: (in, out)
    np.testing.assert_array_equal(st["all_modules.5.Dense_0.weight"],
                                  p["ResBlock_1"]["temb_proj"]["kernel"].T)
    np.testing.assert_array_equal(st["all_modules.4.Conv_0.weight"],
                                  np.transpose(p["down_0"]["kernel"], (3, 2, 0, 1)))
    for i, name in enumerate(("q", "k", "v", "proj_out")):
        np.testing.assert_array_equal(st[f"all_modules.6.NIN_{i}.W"],
                                      p["AttnBlock_0"][name]["kernel"])
    assert pham.infer_args(st, 8) == PHAM_HP


def test_pham_checkpoint_round_trip(tmp_path):
    _, v = _pham_case()
    st = pham.to_state(v, PHAM_HP)
    model_opts = PickledObject("parse_utils.ModelOptions",
                               dict(image_size=8, in_channels=3, dim=32, dim_mults=(1, 2),
                                    attn_resolutions=(4,), num_res_blocks=1, dropout=0.1,
                                    conditional=True, resamp_with_conv=True, nonlinearity="swish",
                                    scale_by_sigma=False))
    train_opts = PickledObject("parse_utils.TrainOptions",
                               dict(train_size=64, prediction_type="epsilon",
                                    beta_schedule="linear", timesteps=1000))
    args = PickledObject("argparse.Namespace", dict(model=model_opts, train=train_opts))
    path = tw.write_torch_zip(tmp_path / "64.pt", {"model": st, "ema": st, "opt": {}, "args": args,
                                                     "iterations": 2500})
    imp = pham.read(path)
    assert _equal_trees(imp.variables, v) and imp.step == 2500
    assert imp.model["name"] == "ddpm_unet" and imp.model["dropout"] == 0.1
    assert imp.diffusion["precond"] == "ddpm" and imp.sample["sampler"] == "ddpm_ancestral"
    # A bare state dict: args inferred from the keys; DataParallel prefix; score_sde's sigmas buffer
    bare = {f"module.{k}": a for k, a in st.items()}
    bare = tw.write_torch_zip(tmp_path / "bare.pt", dict(bare, **{"module.sigmas": np.ones(4)}))
    assert _equal_trees(pham.read(bare, image_size=8).variables, v)
    with pytest.raises(MappingError) as e:
        pham.from_state(st, dict(model=dict(PHAM_HP, conditional=False)))
    _one_line(e, "conditional")


# ---------------------------------------------------------------------------------------- diffusers
DIF_HP = dict(image_size=8, in_channels=3, ch=32, ch_mult=(1, 2), attn_resolutions=(4,),
              num_res_blocks=1, num_groups=32, dropout=0.0)


def _diffusers_case():
    net = nets.DDPMUNet(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,))
    return net, _random_variables(net, (1, 8, 8, 3), (1,), seed=2)


def test_diffusers_layout_and_safetensors_round_trip(tmp_path):
    _, v = _diffusers_case()
    st = dif.to_state(v, DIF_HP)
    p = v["params"]
    config = dif.export_config(DIF_HP)
    assert config["down_block_types"] == ["DownBlock2D", "AttnDownBlock2D"]
    assert config["up_block_types"] == ["AttnUpBlock2D", "UpBlock2D"]
    assert dif.architecture(config) == DIF_HP
    np.testing.assert_array_equal(st["down_blocks.1.resnets.0.conv_shortcut.weight"][:, :, 0, 0],
                                  p["ResBlock_1"]["skip"]["kernel"].T)
    np.testing.assert_array_equal(st["down_blocks.1.attentions.0.to_q.weight"],
                                  p["AttnBlock_0"]["q"]["kernel"].T)
    np.testing.assert_array_equal(st["mid_block.attentions.0.to_out.0.bias"],
                                  p["AttnBlock_1"]["proj_out"]["bias"])
    assert st["up_blocks.0.upsamplers.0.conv.weight"].shape == (64, 64, 3, 3)  # -> up_1
    np.testing.assert_array_equal(st["conv_norm_out.weight"], p["norm_out"]["scale"])
    folder = tmp_path / "unet"
    folder.mkdir()
    sf.write_safetensors(folder / "diffusion_pytorch_model.safetensors", st,
                         metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(dict(config, _diffusers_version="0.0.4")))
    imp = dif.read(str(folder))
    assert _equal_trees(imp.variables, v) and imp.diffusion["precond"] == "ddpm"
    legacy = {k.replace(".to_q.", ".query.").replace(".to_out.0.", ".proj_attn."): a for k,
              a in st.items()}
    assert _equal_trees(dif.from_state(legacy, config).variables,
                        v)  # old diffusers attention names
    with pytest.raises(MappingError) as e:
        dif.from_state(st, dict(config, downsample_padding=1))
    _one_line(e, "downsample_padding")


# --------------------------------------------------------------------------------------- Kadkhodaie
def test_kadkhodaie_layouts_and_round_trip(tmp_path):
    unet = nets.BFUNet(num_kernels=4, num_blocks=2)
    v = _random_variables(unet, (1, 8, 8, 1), seed=4)
    hp = dict(name="bf_unet", channels=1, num_kernels=4, num_blocks=2, num_enc_conv=2,
              num_mid_conv=2, num_dec_conv=2)
    st = kadkhodaie.to_state(v, hp)
    assert list(st)[:4] == ["encoder.0.0.weight", "encoder.0.2.weight", "encoder.0.3.gammas",
                            "encoder.0.3.running_sd"]
    assert st["encoder.0.3.gammas"].shape == (1, 4, 1, 1)
    np.testing.assert_array_equal(st["encoder.0.3.running_sd"].ravel(),
                                  v["batch_stats"]["BFBatchNorm_0"]["running_sd"])
    assert st["upsample.1.weight"].shape == (16, 8, 2,
                                             2)  # ConvTranspose2d (in, out, kh, kw) -> UpConv2_0
    np.testing.assert_array_equal(st["upsample.1.weight"][3, 5, 1, 0],
                                  v["params"]["UpConv2_0"]["kernel"][1, 0, 3, 5])
    assert "decoder.0.3.weight" in st and "decoder.0.4.gammas" not in st  # last conv: no norm
    path = tw.write_torch_zip(tmp_path / "model.pt", {f"module.{k}": a for k, a in st.items()})
    tw.write_network_pickle(tmp_path / "exp_arguments.pkl",
                            dict(arch_name="UNet", num_kernels=4, num_blocks=2, kernel_size=3,
                                 padding=1, bias=False))
    imp = kadkhodaie.read(path, image_size=16)
    assert _equal_trees(imp.variables,
                        v) and imp.model["name"] == "bf_unet" and imp.image_shape == (16, 16, 1)

    cnn = nets.BFCNN(num_layers=4, num_kernels=4, first_layer_linear=True)
    v = _random_variables(cnn, (1, 8, 8, 1), seed=5)
    hp = dict(name="bf_cnn", channels=1, num_kernels=4, num_layers=4, first_layer_linear=True)
    st = kadkhodaie.to_state(v, hp)
    assert list(st)[:5] == [f"conv_layers.{i}.weight" for i in range(4)] + ["BN_layers.0.gammas"]
    imp = kadkhodaie.from_state(st, image_size=8, first_layer_linear=True)
    assert _equal_trees(imp.variables, v) and imp.model == {k: a for k,
                                                            a in hp.items() if k != "channels"}
    with pytest.raises(MappingError) as e:
        kadkhodaie.from_state(dict(st, **{"conv_layers.1.bias": np.zeros(4, np.float32)}),
                              image_size=8)
    _one_line(e, "conv_layers.1.bias", "bias free")


# --------------------------------------------------------------------------------------- bad inputs
def test_unknown_missing_and_misshapen_keys_stop_with_one_line_naming_the_key(tmp_path):
    _, v = _pham_case()
    st = pham.to_state(v, PHAM_HP)
    args = dict(model=PHAM_HP)
    with pytest.raises(MappingError) as e:
        pham.from_state(dict(st, **{"all_modules.99.weight": np.zeros(3, np.float32)}), args)
    _one_line(e, "'all_modules.99.weight'", "does not map")
    bad = dict(st)
    bad["all_modules.5.Conv_0.weight"] = bad["all_modules.5.Conv_0.weight"][:, :16]
    with pytest.raises(MappingError) as e:
        pham.from_state(bad, args)
    _one_line(e, "'all_modules.5.Conv_0.weight'", "(64, 16, 3, 3)", "(64, 32, 3, 3)")
    del bad["all_modules.5.Conv_0.weight"]
    with pytest.raises(MappingError) as e:
        pham.from_state(bad, args)
    _one_line(e, "'all_modules.5.Conv_0.weight'", "missing")
    imp = pham.from_state(st, args)  # 3-channel network, 1-channel data: refused, nothing left
    with pytest.raises(InputError) as e:
        workdir_writer.write_workdir(imp, str(tmp_path / "wd"), data="digits")
    _one_line(e, "(8, 8, 1)", "(8, 8, 3)")
    assert not os.path.exists(tmp_path / "wd")
    _, ve, cls, hp = _edm_case()
    ste = edm.to_state(ve, cls, hp)
    ste["model.enc.4x4_down.conv0.resample_filter"] = np.ones((1, 1, 2, 2),
                                                              np.float32)  # NCSN++'s filter
    with pytest.raises(MappingError) as e:
        edm.from_state(ste, cls, hp)
    _one_line(e, "resample_filter")


# --------------------------------------------------------------- upstream blocks re-stated in numpy
def test_noise_embeddings_match_upstream_formulas():
    t = np.array([0.0, 3.0, 999.0, -1.7], np.float32)
    # diffusers get_timestep_embedding(t, 32, flip_sin_to_cos=False, downscale_freq_shift=1) =
    # Ho et al.'s
    half = 16
    freqs = np.exp(-math.log(10000) * np.arange(half) / (half - 1))
    ho = np.concatenate([np.sin(t[:, None] * freqs), np.cos(t[:, None] * freqs)], 1)
    emb = nets.SinusoidalEmbedding(32)
    np.testing.assert_allclose(emb.apply({}, jnp.asarray(t)), ho, rtol=1e-5, atol=2e-4)
    # EDM's PositionalEmbedding(num_channels=32, endpoint=True): [cos, sin]; SongUNet swaps it
    # to [sin, cos]
    f = (1 / 10000) ** (np.arange(half) / (half - 1))
    edm_emb = np.concatenate([np.cos(np.outer(t, f)), np.sin(np.outer(t, f))], 1)
    swapped = edm_emb.reshape(4, 2, half)[:, ::-1].reshape(4, 32)
    np.testing.assert_allclose(emb.apply({}, jnp.asarray(t)), swapped, rtol=1e-5, atol=2e-4)


def _np_group_norm(x, w, b, groups, eps=1e-6):
    n, c, h, ww = x.shape
    g = x.reshape(n, groups, -1)
    g = (g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + eps)
    return g.reshape(n, c, h, ww) * w[None, :, None, None] + b[None, :, None, None]


def _np_conv3x3(x, w, b):
    """PyTorch's Conv2d(k=3, padding=1) on NCHW with an OIHW weight."""
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    h, ww = x.shape[2:]
    out = sum(np.einsum("nchw,oc->nohw", xp[:, :, i:i + h, j:j + ww],
                        w[:, :, i, j]) for i in range(3) for j in range(3))
    return out + b[None, :, None, None]


def test_score_sde_resnet_block_restated_in_numpy_matches_diffmem():
    """Pham et al.'s ResnetBlockDDPM (NCHW, their tensors) vs diffmem's ResBlock on the mapped
    weights."""
    block = nets.unet.ResBlock(out_ch=64, dropout=0.0)
    x = np.random.default_rng(6).normal(size=(2, 4, 4, 32)).astype(np.float32)
    temb = np.random.default_rng(7).normal(size=(2, 128)).astype(np.float32)
    v = _random_variables(block, (2, 4, 4, 32), (2, 128), seed=8, extra=(False,))
    entries = pham._block("b", "blk", 32, 64)
    st = {e.key: a for e, a in zip(entries, from_flax({"params": {"blk": v["params"]}},
                                                      entries).values())}
    swish = lambda z: z / (1 + np.exp(-z))  # noqa: E731
    xc = x.transpose(0, 3, 1, 2)
    h = swish(_np_group_norm(xc, st["b.GroupNorm_0.weight"], st["b.GroupNorm_0.bias"], 32))
    h = _np_conv3x3(h, st["b.Conv_0.weight"], st["b.Conv_0.bias"])
    h = h + (swish(temb) @ st["b.Dense_0.weight"].T + st["b.Dense_0.bias"])[:, :, None, None]
    h = swish(_np_group_norm(h, st["b.GroupNorm_1.weight"], st["b.GroupNorm_1.bias"], 32))
    h = _np_conv3x3(h, st["b.Conv_1.weight"], st["b.Conv_1.bias"])
    skip = np.einsum("nchw,co->nohw", xc, st["b.NIN_0.W"]) + st["b.NIN_0.b"][None, :, None, None]
    want = (skip + h).transpose(0, 2, 3, 1)
    got = block.apply(v, jnp.asarray(x), jnp.asarray(temb), False)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-3)


def test_edm_attention_restated_in_numpy_matches_diffmem():
    """EDM's UNetBlock attention (qkv reshaped to (N * heads, C / heads, 3, HW)) on the mapped
    weights."""
    block = nets.songunet.SongBlock(out_channels=16, attention=True)
    x = np.random.default_rng(9).normal(size=(2, 4, 4, 16)).astype(np.float32)
    v = _random_variables(block, (2, 4, 4, 16), (2, 8), seed=10, extra=(False,))
    emb = np.zeros((2, 8), np.float32)
    # Zero the residual branch so the block output is (x sqrt(1/2) + attention) sqrt(1/2).
    for name in ("conv1",):
        v["params"][name] = {k: np.zeros_like(a) for k, a in v["params"][name].items()}
    entries = edm._block("b", "blk", resample=False, skip=False, attention=True)
    st = {e.key: a for e, a in zip(entries, from_flax({"params": {"blk": v["params"]}},
                                                      entries).values())}
    s = math.sqrt(0.5)
    hc = (x * s).transpose(0, 3, 1, 2)  # the block's residual output with conv1 = 0
    n = _np_group_norm(hc, st["b.norm2.weight"], st["b.norm2.bias"], 4)
    qkv = np.einsum("nchw,oc->nohw", n, st["b.qkv.weight"][:, :, 0, 0])
    qkv = qkv + st["b.qkv.bias"][None, :, None, None]
    q, k, vv = np.moveaxis(qkv.reshape(2, 16, 3, 16), 2, 0)  # (N * 1 head, C, 3, HW)
    w = np.einsum("ncq,nck->nqk", q, k / np.sqrt(16))
    w = np.exp(w - w.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    a = np.einsum("nqk,nck->ncq", w, vv).reshape(2, 16, 4, 4)
    proj = np.einsum("nchw,oc->nohw", a, st["b.proj.weight"][:, :, 0, 0])
    out = (proj + st["b.proj.bias"][None, :, None, None] + hc) * s
    got = block.apply(v, jnp.asarray(x), jnp.asarray(emb), False)
    np.testing.assert_allclose(got, out.transpose(0, 2, 3, 1), rtol=2e-4, atol=2e-4)


# -------------------------------------------------------------------------------- imported workdirs
def test_imported_edm_workdir_samples_like_a_trained_one(tmp_path, one_device):
    from diffmem import generate
    from diffmem.workdir import Workdir
    path, v, _ = _edm_pickle(tmp_path)
    wd = workdir_writer.import_model(str(path), "edm", str(tmp_path / "wd"))
    model = Workdir(wd).model("1")
    assert model.step == 200 and model.shape == (8, 8, 3)
    assert (model.sigma_min, model.sigma_max) == (0.002, 80.0)
    generate.sample_workdir(wd, [0, 1], "edm_euler", num_steps=2, progress=False)
    samples = Workdir(wd).read_samples("1")["samples"]
    assert samples.shape == (2, 8, 8, 3) and np.isfinite(samples).all()
    record = json.load(open(os.path.join(wd, "imported.json")))
    assert record["format"] == "edm" and "placeholder" in record["data"]
    assert "map_augment" in record["dropped"][0]
    with pytest.raises(OutputExistsError) as e:
        workdir_writer.import_model(str(path), "edm", wd)
    _one_line(e, wd)


def test_imported_pham_and_diffusers_workdirs_hold_the_weights(tmp_path):
    from diffmem import checkpoint
    from diffmem.workdir import Workdir
    _, v = _pham_case()
    args = PickledObject("argparse.Namespace",
                         dict(model=PickledObject("parse_utils.ModelOptions",
                                                  dict(image_size=8, in_channels=3, dim=32,
                                                       dim_mults="1,2", attn_resolutions="4",
                                                       num_res_blocks=1))))
    src = tw.write_torch_zip(tmp_path / "64.pt", {"ema": pham.to_state(v, PHAM_HP), "args": args,
                                                   "iterations": 9})
    _, vd = _diffusers_case()
    folder = tmp_path / "ddpm"
    folder.mkdir()
    sf.write_safetensors(folder / "diffusion_pytorch_model.safetensors", dif.to_state(vd, DIF_HP))
    (folder / "config.json").write_text(json.dumps(dif.export_config(DIF_HP)))
    for source, fmt, want, step in ((src, "pham", v, 9), (folder, "diffusers", vd, 1)):
        wd = workdir_writer.import_model(str(source), fmt, str(tmp_path / fmt))
        w = Workdir(wd)
        assert w.config.model.name == "ddpm_unet" and w.config.sample.sampler == "ddpm_ancestral"
        assert w.model("1").step == step
        like = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), want)
        for item in ("ema_params", "params"):
            got, _ = checkpoint.restore_item(w.checkpoint_dir("1"), item, like)
            assert _equal_trees(jax.tree.map(np.asarray, got), want)


def test_bin_import_model_writes_a_kadkhodaie_workdir_with_its_training_set(tmp_path, one_device):
    from diffmem import generate
    from diffmem.workdir import Workdir
    cnn = nets.BFCNN(num_layers=3, num_kernels=4)
    v = _random_variables(cnn, (1, 8, 8, 1), seed=11)
    v["params"] = {k: {n: a * 0.1 for n, a in d.items()} for k, d in v["params"].items()}
    v["batch_stats"] = {k: {n: np.abs(a) + 1 for n, a in d.items()} for k,
                        d in v["batch_stats"].items()}
    hp = dict(name="bf_cnn", channels=1, num_kernels=4, num_layers=3, first_layer_linear=False)
    src = tw.write_torch_zip(tmp_path / "model.pt", kadkhodaie.to_state(v, hp))
    wd = str(tmp_path / "kad")
    cmd = [sys.executable, os.path.join(REPO, "bin", "import_model.py"), f"--source={src}",
           "--format=kadkhodaie", "--data=digits", "--k=10", f"--workdir={wd}"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    model = Workdir(wd).model("10")
    assert model.train_data.shape == (10, 8, 8, 1)
    np.testing.assert_array_equal(Workdir(wd).specs()[0].indices, np.arange(10))
    generate.sample_workdir(wd, [0, 1], "edm_euler", num_steps=2, progress=False)
    assert Workdir(wd).read_samples("10")["samples"].shape == (2, 8, 8, 1)
    # The checkpoint has the layout the trainer resumes from: its whole state (optimizer included)
    # restores into the trainer's structure, as train.py's resume does.
    from diffmem import builders, checkpoint
    config = Workdir(wd).config
    params = jax.tree.map(jnp.asarray, v)
    like = {"step": jnp.zeros((), jnp.int32), "params": params, "ema_params": params,
            "opt_state": builders.build_optimizer(config).init(params)}
    state = checkpoint.restore(checkpoint.manager(wd, "10", None), 1, like)
    assert _equal_trees(jax.tree.map(np.asarray, state["params"]), v)
    # its optimizer state is the trainer's fresh one (written as zero pages, not computed)
    got, fresh = state["opt_state"], like["opt_state"]
    assert jax.tree.structure(got) == jax.tree.structure(fresh)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(fresh)))
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert again.returncode != 0 and "already exists" in again.stderr
    assert again.stderr.count("\n") <= 2
