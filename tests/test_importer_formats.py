"""The format layer of diffmem.importers: torch zip checkpoints, EDM network pickles (legacy storage
streams inside), plain side pickles and safetensors, read without torch and without running anything
from the file, and written byte-faithfully from numpy arrays."""
from __future__ import annotations

import collections
import math
import os
import pathlib
import pickle
import pickletools
import re
import zipfile

import numpy as np
import pytest

from diffmem.errors import InputError, MissingInputError
from diffmem.importers import safetensors_files as sf
from diffmem.importers import torch_files as tf
from diffmem.importers import torch_writers as tw
from diffmem.importers.torch_files import PickledObject, UnsafePickleError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULE_DICT = "torch.nn.modules.container.ModuleDict"


def _globals(data: bytes) -> set[str]:
    """Every global a pickle names (GLOBAL and STACK_GLOBAL), read by pickletools (decode only)."""
    out, strings = set(), []
    for op, arg, _ in pickletools.genops(data):
        if op.name == "GLOBAL":
            out.add(arg.replace(" ", "."))
        elif op.name == "STACK_GLOBAL":
            out.add(f"{strings[-2]}.{strings[-1]}")
        if isinstance(arg, str):
            strings.append(arg)
    return out


def _one_line_naming(err: Exception, path) -> None:
    msg = str(err)
    assert "\n" not in msg and str(path) in msg, msg


# ------------------------------------------------------------------------------------- torch zip
def test_torch_zip_round_trip_dtypes_views_and_layout(tmp_path):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    rng = np.random.default_rng(0)
    base = np.arange(20, dtype=np.float64)
    sd = collections.OrderedDict([
        ("w", rng.normal(size=(4, 3, 3, 3)).astype(np.float32)),
        ("wT", rng.normal(size=(3, 5)).astype(np.float32).T),  # non-contiguous input
        ("h", np.array([1.5, -2.0], np.float16)), ("d", base[::3].copy()),
        ("i", np.array([-3, 2**40], np.int64)), ("i32", np.array([7], np.int32)),
        ("i8", np.array([-1], np.int8)), ("u8", np.array([255], np.uint8)),
        ("b", np.array([True, False])), ("scalar", np.array(2.5, np.float32)),
        ("empty", np.zeros((0, 4), np.float32)),
        ("bf16", np.array([1.5, -2.25, 3.0e38], ml_dtypes.bfloat16))])
    views = {"full": tw.TensorView(base, 0, (20,), (1,)),       # two tensors, one storage
             "strided": tw.TensorView(base, 3, (2, 3), (1, 5))}
    path = tw.write_torch_zip(tmp_path / "2.pt", {"sd": sd, "views": views, "step": 7})
    out = tf.read_torch_file(path)
    for k, v in sd.items():
        got = out["sd"][k]
        want = np.asarray(v, np.float32) if k == "bf16" else v
        assert got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want), k
    assert np.array_equal(out["views"]["strided"], [[3, 8, 13], [4, 9, 14]])
    assert np.array_equal(out["views"]["full"], base) and out["step"] == 7
    assert list(out["sd"]) == list(sd)  # order kept

    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        assert names[:4] == ["2/data.pkl", "2/.format_version", "2/.storage_alignment",
                             "2/byteorder"]
        assert names[-2:] == ["2/version", "2/.data/serialization_id"]
        data_records = [n for n in names if n.startswith("2/data/")]
        assert data_records == [f"2/data/{i}" for i in range(len(sd) + 1)]  # base stored once
        assert zf.read("2/.format_version") == b"1" and zf.read("2/byteorder") == b"little"
        assert zf.read("2/version") == b"3\n" and zf.read("2/.storage_alignment") == b"64"
        assert zf.read("2/data/0") == sd["w"].tobytes()
        pkl = zf.read("2/data.pkl")
        raw = open(path, "rb").read()
        for info in zf.infolist():
            assert info.compress_type == zipfile.ZIP_STORED
            n, m = np.frombuffer(raw[info.header_offset + 26:info.header_offset + 30], "<u2")
            assert (info.header_offset + 30 + n + m) % 64 == 0, info.filename
    assert pkl[:2] == b"\x80\x02"  # protocol 2, as torch.save writes it
    assert _globals(pkl) == {"torch._utils._rebuild_tensor_v2", "collections.OrderedDict",
                             "torch.FloatStorage", "torch.HalfStorage", "torch.DoubleStorage",
                             "torch.LongStorage", "torch.IntStorage", "torch.CharStorage",
                             "torch.ByteStorage", "torch.BoolStorage", "torch.BFloat16Storage"}


def test_torch_zip_root_folder_is_any_name(tmp_path):
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    a = tw.write_torch_zip(tmp_path / "model.pth.tar", {"w": w})
    b = tw.write_torch_zip(tmp_path / "x.pt", {"w": w}, root="archive")
    assert zipfile.ZipFile(a).namelist()[0] == "model/data.pkl"  # torch: the name to its first dot
    assert zipfile.ZipFile(b).namelist()[0] == "archive/data.pkl"
    for p in (a, b):
        assert np.array_equal(tf.read_torch_zip(p)["w"], w)


def test_dataparallel_prefix_and_flatten(tmp_path):
    names = ["conv.weight", "bn.gammas", "bn.running_sd"]
    sd = collections.OrderedDict((f"module.{k}", np.full((2,), i, np.float32))
                                 for i, k in enumerate(names))
    out = tf.read_torch_file(tw.write_torch_zip(tmp_path / "model.pt", sd))
    flat = tf.strip_prefix(tf.flatten_state_dict(out))
    assert list(flat) == ["conv.weight", "bn.gammas", "bn.running_sd"]
    assert tf.strip_prefix({"module.a": 1, "b": 2}) == {"module.a": 1, "b": 2}  # not all: kept


def test_pham_style_checkpoint_stubs_args_and_keeps_optimizer_state(tmp_path):
    ema = collections.OrderedDict((f"all_modules.{i}.weight", np.ones((2, 2), np.float32) * i)
                                  for i in range(3))
    model_cfg = PickledObject("utils.parse_utils.ModelConfig",
                              {"dim": 64, "dim_mults": (1, 2, 2), "attn_resolutions": (16,)})
    args = PickledObject("argparse.Namespace", {"model": model_cfg, "lr": 2e-4, "name": "cifar"})
    opt = {"state": {0: {"step": np.array(3.0, np.float32), "exp_avg": np.zeros(2, np.float32)}},
           "param_groups": [{"lr": 2e-4, "betas": (0.9, 0.999), "amsgrad": False, "params": [0]}]}
    path = tw.write_torch_zip(tmp_path / "ckpt.pt", {"model": ema, "ema": ema, "opt": opt,
                                                    "args": args, "iterations": 100000})
    out = tf.read_torch_file(path)
    assert out["iterations"] == 100000 and list(out["ema"]) == list(ema)
    assert out["args"] == args  # the Namespace and the parse_utils dataclass, recorded not built
    assert out["opt"]["state"][0]["step"].shape == () and out["opt"]["state"][0]["step"] == 3
    assert out["opt"]["param_groups"][0]["betas"] == (0.9, 0.999)
    globals_ = _globals(zipfile.ZipFile(path).read("ckpt/data.pkl"))
    assert {"argparse.Namespace", "utils.parse_utils.ModelConfig"} <= globals_


def test_exp_arguments_side_file_has_only_torch_device(tmp_path):
    args = {"arch": "BF_CNN", "num_layers": 20, "first_layer_linear": True,
            "device": PickledObject("torch.device", args=("cuda", 0), kind="call"),
            "cpu": PickledObject("torch.device", args=("cpu",), kind="call")}
    path = tw.write_network_pickle(tmp_path / "exp_arguments.pkl", args)
    assert _globals(open(path, "rb").read()) == {"torch.device"}
    out = tf.read_torch_file(path)
    assert out == {**args, "device": "cuda:0", "cpu": "cpu"}


# ----------------------------------------------------------------------------------- EDM pickles
def _module(name, params=None, buffers=None, modules=None, **attrs):
    state = {"training": False, "_parameters": collections.OrderedDict(params or {}),
             "_buffers": collections.OrderedDict(buffers or {}),
             "_non_persistent_buffers_set": set(),
             "_modules": collections.OrderedDict(modules or {}), **attrs}
    return state if name is None else PickledObject(name, state, kind="persistent",
                                                     source=_module.src)


def _edm_snapshot(marker: str):
    _module.src = f"open({marker!r}, 'w').write('ran')\nraise SystemExit(3)\n" + "#" * 500
    rng = np.random.default_rng(1)
    shared = rng.normal(size=16).astype(np.float32)
    conv = _module("Conv2d", {"weight": tw.Parameter(rng.normal(size=(8, 3, 3, 3)).astype("f4")),
                              "bias": tw.Parameter(np.zeros(8, np.float32))},
                   {"resample_filter": None}, in_channels=3, out_channels=8)
    conv0 = _module("Conv2d", {"weight": tw.Parameter(tw.TensorView(shared, 0, (2, 8), (8, 1))),
                               "bias": tw.Parameter(tw.TensorView(shared, 0, (4,), (2,)))},
                    {"resample_filter": np.ones((1, 1, 2, 2), np.float32) / 4})
    block = _module("UNetBlock", modules={"conv0": conv0}, skip_scale=np.float64(math.sqrt(0.5)),
                    _init_kwargs={"skip_scale": np.float64(math.sqrt(0.5))})
    enc = PickledObject(MODULE_DICT, _module(None, modules={"32x32_conv": conv,
                                                            "32x32_block0": block}))
    unet = _module("SongUNet", modules={"enc": enc}, label_dropout=0,
                   _init_args=(), _init_kwargs={"img_resolution": 32, "in_channels": 3,
                                                "model_channels": 8, "channel_mult": [1, 2]})
    ema = _module("EDMPrecond", modules={"model": unet}, sigma_min=0.0, sigma_max=float("inf"),
                  sigma_data=0.5, img_resolution=32, img_channels=3, label_dim=0,
                  _init_args=(), _init_kwargs={"model_type": "SongUNet", "img_resolution": 32,
                                               "img_channels": 3, "label_dim": 0})
    loss = _module("EDMLoss", P_mean=-1.2, P_std=1.2, sigma_data=0.5)
    data = {"ema": ema, "loss_fn": loss, "augment_pipe": None,
            "dataset_kwargs": {"class_name": "training.dataset.ImageFolderDataset", "xflip": False}}
    return data, shared


def test_edm_network_pickle_round_trip_without_running_module_src(tmp_path):
    marker = str(tmp_path / "module_src_ran")
    data, shared = _edm_snapshot(marker)
    path = tw.write_network_pickle(tmp_path / "network-snapshot-000000.pkl", data)
    raw = open(path, "rb").read()
    assert raw[:2] == b"\x80\x04"
    assert _globals(raw) == {"torch_utils.persistence._reconstruct_persistent_obj",
                             "torch._utils._rebuild_parameter", "torch._utils._rebuild_tensor_v2",
                             "torch.storage._load_from_bytes", MODULE_DICT,
                             "collections.OrderedDict", "numpy.dtype",
                             np.float64(0).__reduce__()[0].__module__ + ".scalar"}
    magic = tf.LEGACY_MAGIC.to_bytes(10, "little")
    assert raw.count(magic) == 4  # legacy streams: conv weight and bias, the shared one, filter

    out = tf.read_network_pickle(path)
    assert not os.path.exists(marker)  # module_src was never run
    ema = out["ema"]
    assert isinstance(ema, PickledObject) and ema.class_name == "EDMPrecond"
    assert ema.kind == "persistent" and ema.source == _module.src
    enc = ema.state["_modules"]["model"].state["_modules"]["enc"]
    assert enc.class_name == MODULE_DICT and enc.kind == "object"
    block = enc.state["_modules"]["32x32_block0"]
    assert type(block.state["skip_scale"]) is float and block.state["skip_scale"] == math.sqrt(0.5)
    assert block.state["_init_kwargs"]["skip_scale"] == math.sqrt(0.5)

    flat = tf.flatten_state_dict(ema)
    prefix = "model.enc."
    assert list(flat) == [prefix + "32x32_conv.weight", prefix + "32x32_conv.bias",
                          prefix + "32x32_block0.conv0.weight", prefix + "32x32_block0.conv0.bias",
                          prefix + "32x32_block0.conv0.resample_filter"]
    assert np.array_equal(flat[prefix + "32x32_block0.conv0.weight"], shared.reshape(2, 8))
    assert np.array_equal(flat[prefix + "32x32_block0.conv0.bias"], shared[:8:2])
    conv_w = data["ema"].state["_modules"]["model"].state["_modules"]["enc"].state["_modules"][
        "32x32_conv"].state["_parameters"]["weight"].data
    assert np.array_equal(flat[prefix + "32x32_conv.weight"], conv_w)

    net = tf.read_edm_pickle(path)
    assert net["class_name"] == "EDMPrecond" and list(net["state_dict"]) == list(flat)
    assert net["hparams"]["model_channels"] == 8 and net["hparams"]["sigma_data"] == 0.5
    assert net["hparams"]["model_type"] == "SongUNet" and net["hparams"]["sigma_max"] == math.inf
    assert net["dataset_kwargs"]["xflip"] is False
    assert out["loss_fn"].class_name == "EDMLoss" and out["augment_pipe"] is None


def test_legacy_torch_file_round_trip(tmp_path):
    """torch < 1.6 files (`_use_new_zipfile_serialization=False`): storages after the pickle."""
    base = np.arange(12, dtype=np.float32)
    obj = collections.OrderedDict(
        [(f"module.l{i}.weight", np.full((2, 2), i, np.float64)) for i in range(11)]
        + [("module.view", tw.TensorView(base, 1, (2, 2), (6, 2))), ("module.base", base)])
    path = tw.write_torch_legacy(tmp_path / "old.pth", obj)
    raw = open(path, "rb").read()
    assert raw.startswith(b"\x80\x02\x8a\x0a" + tf.LEGACY_MAGIC.to_bytes(10, "little"))
    out = tf.strip_prefix(tf.flatten_state_dict(tf.read_torch_file(path)))
    assert list(out) == [f"l{i}.weight" for i in range(11)] + ["view", "base"]
    assert np.array_equal(out["l10.weight"], np.full((2, 2), 10.0))
    assert np.array_equal(out["view"], [[1, 3], [7, 9]]) and np.array_equal(out["base"], base)
    with pytest.raises(InputError) as err:
        (tmp_path / "cut.pth").write_bytes(raw[:-7])
        tf.read_torch_file(tmp_path / "cut.pth")
    _one_line_naming(err.value, tmp_path / "cut.pth")


def test_tensors_spanning_their_storage_are_views_of_the_files_bytes(tmp_path):
    """No copy per tensor: a native-order storage decodes as a view of its bytes, and a tensor that
    is its whole storage is that view reshaped (read-only); other byte orders are converted."""
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    raw = w.tobytes()
    flat = tf.decode_storage(raw, "f4")
    assert np.shares_memory(flat, np.frombuffer(raw, np.uint8)) and np.array_equal(flat, w.ravel())
    swapped = tf.decode_storage(w.astype(">f4").tobytes(), "f4", "big")
    assert swapped.dtype == np.float32 and np.array_equal(swapped, w.ravel())
    out = tf.read_torch_file(tw.write_torch_zip(tmp_path / "v.pt", {"w": w}))
    assert np.array_equal(out["w"], w) and not out["w"].flags.owndata
    assert not out["w"].flags.writeable
    data, _ = _edm_snapshot(str(tmp_path / "m"))
    state = tf.read_edm_pickle(tw.write_network_pickle(tmp_path / "net.pkl", data))["state_dict"]
    # its own storage: a view; a part of the shared storage of conv0.bias: a copy
    assert not state["model.enc.32x32_conv.weight"].flags.owndata
    assert state["model.enc.32x32_block0.conv0.bias"].flags.owndata


def test_legacy_stream_of_one_storage():
    flat = np.arange(5, dtype=np.int64)
    stream = tw._legacy_stream(flat)
    assert stream.startswith(b"\x80\x02\x8a\x0a" + (0x1950a86a20f9469cfc6c).to_bytes(10, "little"))
    out = tf.parse_legacy_torch(stream)
    assert out.dtype == np.int64 and np.array_equal(out, flat)
    with pytest.raises(InputError, match="cut short"):
        tf.parse_legacy_torch(stream[:-3], "x.bin")


# ----------------------------------------------------------------------------------- refusals
class _Evil:
    def __init__(self, call, *args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


def test_malicious_globals_are_refused_before_anything_runs(tmp_path):
    marker = tmp_path / "pwned"
    payloads = {r"(os|posix|nt)\.system": _Evil(os.system, f"touch {marker}"),
                r"(builtins|__builtin__)\.exec": _Evil(exec, f"open({str(marker)!r}, 'w')"),
                r"(builtins|__builtin__)\.eval": _Evil(eval, "1 + 1")}
    for name, evil in payloads.items():
        for protocol in (2, 4):
            path = tmp_path / f"evil{protocol}.pkl"
            path.write_bytes(pickle.dumps({"ema": [1, evil]}, protocol=protocol))
            with pytest.raises(UnsafePickleError, match=name) as err:
                tf.read_torch_file(path)
            _one_line_naming(err.value, path)
    # inside a torch zip's data.pkl, and inside an EDM legacy storage stream
    good = tw.write_torch_zip(tmp_path / "good.pt", {"w": np.ones(2, np.float32)})
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(tmp_path / "bad.pt", "w") as zout:
        for info in zin.infolist():
            body = zin.read(info)
            if info.filename.endswith("data.pkl"):
                body = pickle.dumps([payloads[r"(os|posix|nt)\.system"]], protocol=2)
            zout.writestr(info, body)
    with pytest.raises(UnsafePickleError, match=r"\.system"):
        tf.read_torch_zip(tmp_path / "bad.pt")
    evil_stream = pickle.dumps(payloads[r"(os|posix|nt)\.system"], protocol=2)
    nested = tmp_path / "nested.pkl"
    nested.write_bytes(_load_from_bytes_pickle(evil_stream))
    with pytest.raises(UnsafePickleError, match=r"\.system"):
        tf.read_network_pickle(nested)
    assert not marker.exists()


def _load_from_bytes_pickle(stream: bytes) -> bytes:
    """A protocol-4 pickle of torch.storage._load_from_bytes(stream), written by hand."""
    return (b"\x80\x04\x8c\x0dtorch.storage\x8c\x10_load_from_bytes\x93"
            + b"B" + len(stream).to_bytes(4, "little") + stream + b"\x85R.")


def test_build_on_an_allowed_global_and_odd_objects_are_refused(tmp_path):
    path = tmp_path / "patch.pkl"
    # GLOBAL torch._utils._rebuild_tensor_v2; {'__defaults__': ...}; BUILD
    path.write_bytes(b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n}X\x0c\x00\x00\x00__defaults__"
                     b"K\x01sb.")
    with pytest.raises(UnsafePickleError, match="BUILD"):
        tf.read_network_pickle(path)
    path.write_bytes(pickle.dumps(_Evil(tf.decode_storage, b"", "f4"), protocol=2))
    with pytest.raises(UnsafePickleError, match="diffmem.importers.torch_files.decode_storage"):
        tf.read_network_pickle(path)
    with pytest.raises(UnsafePickleError, match="persistent id"):
        path.write_bytes(b"\x80\x02X\x04\x00\x00\x00evilQ.")
        tf.read_network_pickle(path)


def test_no_module_calls_unrestricted_unpickling():
    pattern = re.compile(r"\b(pickle\.loads?|torch\.load|dill\.loads?|joblib\.load)\(")
    found = []
    for folder, _, files in os.walk(os.path.join(REPO, "diffmem")):
        for f in files:
            if f.endswith(".py"):
                with open(os.path.join(folder, f)) as fh:
                    found += [f"{f}:{i}" for i, line in enumerate(fh, 1) if pattern.search(line)]
    assert not found, found


# ------------------------------------------------------------------------------ corrupt files
def test_truncated_and_corrupt_files_give_one_line_errors(tmp_path):
    good = tw.write_torch_zip(tmp_path / "good.pt", {"w": np.ones((4, 4), np.float32)})
    raw = open(good, "rb").read()
    (tmp_path / "cut.pt").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "junk.pt").write_bytes(b"PK\x03\x04" + bytes(range(256)))
    data, _ = _edm_snapshot(str(tmp_path / "m"))
    pkl = open(tw.write_network_pickle(tmp_path / "net.pkl", data), "rb").read()
    (tmp_path / "cut.pkl").write_bytes(pkl[: len(pkl) // 3])
    (tmp_path / "text.pkl").write_bytes(b"hello, not a pickle")
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(tmp_path / "short.pt", "w") as zout:
        for info in zin.infolist():
            body = zin.read(info)
            zout.writestr(info, body[:10] if "/data/" in info.filename else body)
    for name in ("cut.pt", "junk.pt", "cut.pkl", "text.pkl", "short.pt"):
        with pytest.raises(InputError) as err:
            tf.read_torch_file(tmp_path / name)
        _one_line_naming(err.value, tmp_path / name)
    with pytest.raises(MissingInputError) as err:
        tf.read_torch_file(tmp_path / "nope.pt")
    _one_line_naming(err.value, tmp_path / "nope.pt")
    with pytest.raises(InputError, match="no network 'ema'"):
        tf.read_edm_pickle(tw.write_network_pickle(tmp_path / "plain.pkl", {"a": 1}))


# --------------------------------------------------------------------------------- safetensors
def test_safetensors_round_trip_and_metadata(tmp_path):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    t = {"b.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "a": np.array([1, 2], np.int64),
         "mask": np.array([True, False]), "h": np.ones(3, np.float16),
         "u": np.arange(4, dtype="u1"),
         "e": np.zeros((0, 2)), "bf": np.array([1.5, -2.0], ml_dtypes.bfloat16),
         "t": np.arange(6, dtype=np.float64).reshape(2, 3).T}
    path = sf.write_safetensors(tmp_path / "diffusion_pytorch_model.safetensors", t,
                                {"format": "pt"})
    out = sf.read_safetensors(path)
    assert set(out) == set(t) and sf.read_safetensors_metadata(path) == {"format": "pt"}
    for k, v in t.items():
        want = np.asarray(v, np.float32) if k == "bf" else v
        assert out[k].dtype == want.dtype and np.array_equal(out[k], want), k
    raw = open(path, "rb").read()
    n = int.from_bytes(raw[:8], "little")
    assert n % 8 == 0 and raw[8:8 + n].startswith(b'{"__metadata__":{"format":"pt"},"a":')
    assert sf.read_safetensors_metadata(sf.write_safetensors(tmp_path / "m.safetensors", {})) == {}


def test_safetensors_matches_the_reference_package_byte_for_byte(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    t = {"z": np.ones((2, 2), np.float32), "a": np.arange(3, dtype=np.int64),
         "m": np.array([True]), "h": np.zeros(5, np.float16)}
    ours = sf.write_safetensors(tmp_path / "ours.safetensors", t, {"format": "pt"})
    st.save_file(t, str(tmp_path / "ref.safetensors"), metadata={"format": "pt"})
    assert open(ours, "rb").read() == open(tmp_path / "ref.safetensors", "rb").read()
    back = st.load_file(ours)
    assert all(np.array_equal(back[k], v) and back[k].dtype == v.dtype for k, v in t.items())


def test_corrupt_safetensors_give_one_line_errors(tmp_path):
    path = sf.write_safetensors(tmp_path / "ok.safetensors", {"w": np.ones(4, np.float32)})
    raw = open(path, "rb").read()
    cases = {"short": raw[:5], "cut": raw[:-4],
             "hugeheader": (10**9).to_bytes(8, "little") + raw[8:],
             "notjson": (8).to_bytes(8, "little") + b"{{{{{{{{",
             "badtype": raw.replace(b'"F32"', b'"F99"')}
    for name, body in cases.items():
        p = tmp_path / f"{name}.safetensors"
        p.write_bytes(body)
        with pytest.raises(InputError) as err:
            sf.read_safetensors(p)
        _one_line_naming(err.value, p)
    with pytest.raises(MissingInputError):
        sf.read_safetensors(tmp_path / "missing.safetensors")
    with pytest.raises(InputError, match="object"):
        sf.write_safetensors(tmp_path / "o.safetensors", {"x": np.array([None])})


def test_writers_refuse_what_torch_files_cannot_hold(tmp_path):
    with pytest.raises(InputError, match="complex64"):
        tw.write_torch_zip(tmp_path / "c.pt", {"c": np.ones(2, np.complex64)})
    with pytest.raises(InputError, match="object"):
        tw.write_network_pickle(tmp_path / "o.pkl", {"o": object()})
    assert not os.path.exists(tmp_path / "c.pt") and not os.path.exists(tmp_path / "o.pkl")
    blobs = {"b": b"\x00\xff", "e": b""}  # protocol 2: _codecs.encode and bytes()
    assert tf.read_torch_file(tw.write_torch_zip(tmp_path / "io.pt", blobs)) == blobs


def test_what_real_pickles_of_configs_and_state_dicts_hold(tmp_path):
    """Written by Python's own pickler: a state dict OrderedDict with torch's `_metadata` (BUILD on
    it), pathlib paths, torch dtypes and enums of a config module."""
    od = collections.OrderedDict(a=1, b=[2.5, None])
    od._metadata = collections.OrderedDict({"": {"version": 1}})
    path = tmp_path / "plain.pkl"
    for protocol in (2, 4):
        path.write_bytes(pickle.dumps({"sd": od, "dir": pathlib.PurePosixPath("/data/cifar10")},
                                      protocol=protocol))
        assert tf.read_network_pickle(path) == {"sd": {"a": 1, "b": [2.5, None]},
                                                "dir": "/data/cifar10"}
    # GLOBAL torch.float32 (as torch pickles a dtype); a parse_utils enum called with its value
    path.write_bytes(b"\x80\x02]q\x00(ctorch\nfloat32\nq\x01cutils.parse_utils\nKind\nq\x02"
                     b"X\x03\x00\x00\x00epsq\x03\x85Rq\x04e.")
    dtype, kind = tf.read_network_pickle(path)
    assert dtype == "torch.float32"
    assert kind == PickledObject("utils.parse_utils.Kind", args=("eps",), kind="call")


def test_build_cannot_patch_tensors_storages_or_stub_classes(tmp_path):
    arr = np.arange(3.0)
    patched = PickledObject("torch._utils._rebuild_parameter", kind="call",
                            args=(arr, False, collections.OrderedDict()),
                            state=(None, {"offset": -5, "stride": (-1,)}))
    with pytest.raises(UnsafePickleError, match="BUILD on a tensor"):
        tf.read_torch_zip(tw.write_torch_zip(tmp_path / "patched.pt", {"t": patched}))
    path = tmp_path / "cls.pkl"  # GLOBAL argparse.Namespace; (None, {'__init__': 1}); BUILD
    path.write_bytes(b"\x80\x02cargparse\nNamespace\nN}X\x08\x00\x00\x00__init__K\x01s\x86b.")
    with pytest.raises((InputError, UnsafePickleError)):
        tf.read_network_pickle(path)
    # a tensor subclass / a parameter with Python state: torch._tensor._rebuild_from_type_v2
    sub = PickledObject("torch._tensor._rebuild_from_type_v2", kind="call",
                        args=(tw._Global("torch._utils._rebuild_parameter"),
                              tw._Global("torch.nn.parameter.Parameter"),
                              (arr, False, collections.OrderedDict()), {}))
    out = tf.read_torch_zip(tw.write_torch_zip(tmp_path / "sub.pt", {"p": sub}))
    assert np.array_equal(out["p"], arr)


def test_stubbed_classes_are_namespaces_parse_utils_and_torch_layers_only():
    ok = ["argparse.Namespace", "parse_utils.Config", "src.parse_utils.TrainConfig",
          "torch.nn.modules.container.ModuleDict", "torch.nn.modules.conv.Conv2d"]
    bad = ["argparse.ArgumentParser", "parse_utilsx.A", "torch.nn.functional.silu",
           "torch.nn.modules_evil.A", "os.path.join", "torch.load", "numpy.load"]
    for name in ok + bad:
        module, _, cls = name.rpartition(".")
        assert tf._is_stubbed(module, cls) == (name in ok), name
