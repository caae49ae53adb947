"""The cost of importing a published network: a network pickle of EDM's CIFAR-10 DDPM++ (VPPrecond
around a SongUNet, model_channels 128, channel_mult (2, 2, 2), 4 blocks a level, attention at 16x16,
augment_dim 9: 56M parameters, as EDM's `edm-cifar10-32x32-uncond-vp.pkl`) is written with random
weights in EDM's own layout (`importers.edm.to_state`, `torch_writers.write_network_pickle`), then
imported as `workdir_writer.import_model` does it, its two steps timed apart: `read_source` (read
the pickle, map it onto diffmem's SongUNet) and `write_workdir` (config, subset, the orbax
checkpoint with a fresh Adam state), in a fresh Python process, timed from its start to its exit;
its peak RSS comes from `os.wait4`. The file is written by a process of its own, so that this one
stays small: a child's ru_maxrss counts the memory of the process it was forked from.

    python bench/bench_import.py             # the CIFAR-10 network, 2 runs and a profiled one
    python bench/bench_import.py --small     # model_channels 32 (3.5M parameters), to try it out

The profiled run marks the import's phases (opening the file, unpickling it as a stream, tensors
as arrays, the map, the Adam state, orbax's save) and resets the process's VmHWM at each boundary,
so the table gives every phase's own peak: where the memory goes. `--no_profile` leaves it out.

Target (the importers' issue): the import of a 56M-parameter EDM CIFAR-10 network takes under 30 s
on a 2-core CPU and under 2x the file's size in memory. The peak RSS counts the process's own cost
(Python, jax, the diffmem modules, XLA's CPU client) as well, so the table also gives the peak above
that baseline (the same process's VmHWM once jax is up, before the file is opened). The synthetic
file is written to a temporary folder and removed. Figures are appended as one JSON line to
bench/results/bench_import.json.
"""
import argparse
import collections
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

TARGET_S, TARGET_MEMORY = 30.0, 2.0
# EDM's train.py --cond=0 --arch=ddpmpp --precond=vp for CIFAR-10 (its networks.py defaults else).
MODEL = dict(channels=128, channel_mult=(2, 2, 2), num_blocks=4, attn_resolutions=(16,),
             dropout=0.13, embedding_type="positional", label_dim=0)
DIFFUSION = dict(precond="vp", precond_fields=dict(beta_d=19.9, beta_min=0.1, M=1000,
                                                   epsilon_t=1e-5))
SHAPE, AUGMENT_DIM = (32, 32, 3), 9


def _vm(field: str) -> int:
    """A /proc/self/status figure in bytes (VmRSS, VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _module_tree(state: dict, name: str = "Module", **attrs):
    """A torch module tree (EDM's persistent classes) holding the flat state dict `state`."""
    from diffmem.importers import torch_writers as tw
    from diffmem.importers.torch_files import PickledObject
    children, leaves = collections.OrderedDict(), collections.OrderedDict()
    for key, value in state.items():
        head, dot, rest = key.partition(".")
        if dot:
            children.setdefault(head, collections.OrderedDict())[rest] = value
        else:
            leaves[head] = value
    buffers = {k: v for k, v in leaves.items() if k == "resample_filter"}
    params = {k: tw.Parameter(v) for k, v in leaves.items() if k not in buffers}
    modules = collections.OrderedDict((k, _module_tree(v)) for k, v in children.items())
    module_state = {"training": False, "_parameters": collections.OrderedDict(params),
                    "_buffers": collections.OrderedDict(buffers),
                    "_non_persistent_buffers_set": set(), "_modules": modules, **attrs}
    return PickledObject(name, module_state, kind="persistent", source="raise SystemExit(3)\n")


def write_snapshot(path: str, model: dict) -> int:
    """Write the EDM network pickle of `model` (random weights) at `path`; returns its parameter
    count (map_augment included)."""
    import jax
    import ml_collections
    import numpy as np

    from diffmem import builders, image_configs
    from diffmem.importers import edm, torch_writers
    from diffmem.importers.tensor_map import flatten_variables
    section = image_configs.model_section("ddpmpp", **model)
    net = builders.build_model(ml_collections.ConfigDict(dict(model=section)), SHAPE)
    like = jax.eval_shape(lambda: net.init(jax.random.key(0), jax.numpy.zeros((1,) + SHAPE),
                                           jax.numpy.ones((1,))))
    rng = np.random.default_rng(0)
    variables: dict = {}
    for p, leaf in flatten_variables(like).items():
        node = variables
        for k in p[:-1]:
            node = node.setdefault(k, {})
        node[p[-1]] = (rng.standard_normal(leaf.shape, np.float32) * 0.05)
    cls, hp = edm.export_hparams(model, DIFFUSION, SHAPE)
    state = edm.to_state(variables, cls, hp)
    del variables
    mc = model["channels"]
    aug = (rng.standard_normal((mc, AUGMENT_DIM), np.float32) * 0.05)
    items = list(state.items())
    state = collections.OrderedDict(items[:2] + [("model.map_augment.weight", aug)] + items[2:])
    unet_kwargs = dict(img_resolution=SHAPE[0], in_channels=SHAPE[2], out_channels=SHAPE[2],
                       label_dim=0, augment_dim=AUGMENT_DIM, model_channels=mc,
                       channel_mult=list(model["channel_mult"]), dropout=model["dropout"],
                       embedding_type="positional", encoder_type="standard",
                       decoder_type="standard", channel_mult_noise=1, resample_filter=[1, 1])
    unet = _module_tree({k[len("model."):]: a for k, a in state.items()}, "SongUNet",
                        _init_args=(), _init_kwargs=unet_kwargs)
    fields = DIFFUSION["precond_fields"]
    ema = _module_tree({}, "VPPrecond", img_resolution=SHAPE[0], img_channels=SHAPE[2],
                       label_dim=0, use_fp16=False, sigma_min=0.0064, sigma_max=80.0, **fields,
                       _init_args=(),
                       _init_kwargs=dict(img_resolution=SHAPE[0], img_channels=SHAPE[2],
                                         label_dim=0, use_fp16=False, model_type="SongUNet",
                                         **fields, **{k: v for k, v in unet_kwargs.items()
                                                      if k not in ("img_resolution", "label_dim",
                                                                   "in_channels", "out_channels")}))
    ema.state["_modules"]["model"] = unet
    torch_writers.write_network_pickle(path, {"ema": ema, "loss_fn": None, "augment_pipe": None,
                                              "dataset_kwargs": {}})
    return sum(int(np.prod(a.shape)) for k, a in state.items() if "resample_filter" not in k)


PHASES = []  # (phase, peak bytes, RSS bytes at its end, seconds) of a profiled run


def _mark(label: str) -> None:
    """Close the phase `label`: record its VmHWM, the VmRSS now and its time, then reset VmHWM
    (Linux: /proc/self/clear_refs "5"), so each phase's peak is its own."""
    now = time.perf_counter()
    PHASES.append((label, _vm("VmHWM"), _vm("VmRSS"), now - _mark.t))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    _mark.t = time.perf_counter()


def _profile_phases() -> None:
    """Mark the import's phases by wrapping the functions it calls at their boundaries."""
    import functools

    import jax

    from diffmem import checkpoint
    from diffmem.importers import edm, torch_files, workdir_writer

    def wrap(mod, name, before, after):
        f = getattr(mod, name)

        @functools.wraps(f)
        def g(*args, **kwargs):
            _mark(before)
            out = f(*args, **kwargs)
            jax.block_until_ready(out)
            _mark(after)
            return out
        setattr(mod, name, g)

    wrap(torch_files, "_open", "start-up (python, jax, diffmem)", "open the file")
    wrap(torch_files, "_resolve", "unpickle (storages read, decoded)",
         "tensors as arrays (_resolve)")
    wrap(edm, "to_flax", "state dict, config, shapes (eval_shape)", "map onto SongUNet (to_flax)")
    wrap(workdir_writer, "_fresh_opt_state", "config, subset, shapes checked",
         "Adam state (_fresh_opt_state)")
    wrap(checkpoint, "tree_sha256", "checkpoint manager", "sha256 of the leaves")
    wrap(workdir_writer, "_save_checkpoint", "(none)", "checkpoint written (orbax)")


def child(source: str, workdir: str, profile: bool = False) -> None:
    """One import, in this (fresh) process: phase times and the memory high-water mark after each,
    as one JSON line; with `profile`, each phase's own peak (which resets the process's VmHWM, so
    its wait4 peak no longer counts)."""
    _mark.t = t0 = time.perf_counter()
    import jax
    import jax.numpy as jnp

    from diffmem.importers import workdir_writer
    jnp.zeros(1).block_until_ready()  # XLA's CPU client up, as the import will have it
    out = {"startup_s": time.perf_counter() - t0, "baseline_hwm": _vm("VmHWM")}
    if profile:
        _profile_phases()
    t = time.perf_counter()
    imported = workdir_writer.read_source(source, "edm")
    out.update(read_s=time.perf_counter() - t, read_hwm=_vm("VmHWM"), read_rss=_vm("VmRSS"))
    t = time.perf_counter()
    workdir_writer.write_workdir(imported, workdir, source=source, format="edm")
    out.update(write_s=time.perf_counter() - t, write_hwm=_vm("VmHWM"))
    out["params"] = sum(a.size for a in jax.tree.leaves(imported.variables))
    if profile:
        _mark("write_workdir's end")
        out["phases"] = PHASES
    print(json.dumps(out), flush=True)


def run_child(source: str, workdir: str, profile: bool = False) -> dict:
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child", source,
                             workdir] + ["--profile"] * profile, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=common.REPO)
    # wait4 gives this child's own rusage (RUSAGE_CHILDREN would be the maximum over all children)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    stdout, stderr = proc.stdout.read().decode(), proc.stderr.read().decode()
    if proc.returncode != 0:
        raise SystemExit(f"import failed ({proc.returncode}): {stderr[-2000:]}")
    out = json.loads(stdout.strip().splitlines()[-1])
    out.update(wall_s=wall, maxrss=usage.ru_maxrss * 1024, user_s=usage.ru_utime,
               sys_s=usage.ru_stime)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--small", action="store_true", help="model_channels 32, to try it out")
    ap.add_argument("--no_profile", action="store_true",
                    help="skip the extra run that measures each phase's own peak")
    ap.add_argument("--child", nargs=2, metavar=("SOURCE", "WORKDIR"), help=argparse.SUPPRESS)
    ap.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--write_snapshot", metavar="PATH", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(*a.child, profile=a.profile)
    model = dict(MODEL, channels=32) if a.small else MODEL
    if a.write_snapshot:
        return print(json.dumps({"params": write_snapshot(a.write_snapshot, model)}), flush=True)
    root = tempfile.mkdtemp(prefix="bench_import_")
    try:
        path = os.path.join(root, "network-snapshot-200000.pkl")
        t = time.perf_counter()
        # in a process of its own: this one stays small, as each import's is measured from a fork
        # of it (a child's ru_maxrss starts from the RSS of the process it was forked from)
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--write_snapshot", path]
                             + ["--small"] * a.small, capture_output=True, text=True,
                             cwd=common.REPO)
        if out.returncode != 0:
            raise SystemExit(f"writing the snapshot failed: {out.stderr[-2000:]}")
        n_params = json.loads(out.stdout.strip().splitlines()[-1])["params"]
        write_s = time.perf_counter() - t
        size = os.path.getsize(path)
        runs = []
        for r in range(a.runs):
            runs.append(run_child(path, os.path.join(root, f"wd{r}")))
            shutil.rmtree(os.path.join(root, f"wd{r}"), ignore_errors=True)
        phases = [] if a.no_profile else run_child(path, os.path.join(root, "wdp"), True)["phases"]
    finally:
        shutil.rmtree(root, ignore_errors=True)

    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    mib = lambda b: f"{b / 2**20:.0f} MiB"
    print(f"import of an EDM DDPM++ VPPrecond network pickle, {n_params / 1e6:.1f}M parameters "
          f"(model_channels {model['channels']}, channel_mult {model['channel_mult']}), file "
          f"{mib(size)} (written in {write_s:.1f} s); medians of {a.runs} fresh processes on "
          f"{common.machine()}, load {os.getloadavg()[0]:.1f}")
    rows = [("wall time, process start to exit", f"{med['wall_s']:.1f} s",
             f"{TARGET_S:.0f} s", f"{med['wall_s'] / TARGET_S:.2f}"),
            ("  python + jax + diffmem start-up", f"{med['startup_s']:.1f} s", "", ""),
            ("  read + map (read_source)", f"{med['read_s']:.1f} s", "", ""),
            ("  workdir + checkpoint (write_workdir)", f"{med['write_s']:.1f} s", "", ""),
            ("  cpu time (user + sys)", f"{med['user_s'] + med['sys_s']:.1f} s", "", ""),
            ("peak RSS (wait4 ru_maxrss)", mib(med["maxrss"]), mib(TARGET_MEMORY * size),
             f"{med['maxrss'] / (TARGET_MEMORY * size):.2f}"),
            ("peak RSS above start-up (VmHWM)", mib(med["write_hwm"] - med["baseline_hwm"]),
             mib(TARGET_MEMORY * size),
             f"{(med['write_hwm'] - med['baseline_hwm']) / (TARGET_MEMORY * size):.2f}"),
            ("  start-up RSS (jax up, no file read)", mib(med["baseline_hwm"]), "", ""),
            ("  high-water after read + map", mib(med["read_hwm"]), "", ""),
            ("  RSS after read + map (variables held)", mib(med["read_rss"]), "", "")]
    print(common.table(rows, ("figure", "measured", "target", "ratio")))
    if phases:
        base = phases[0][1]
        print(f"\nwhere the memory goes (one more run, each phase's own peak; start-up "
              f"{mib(base)}, file {mib(size)}):")
        print(common.table([(label, f"{t:.2f} s", mib(peak), f"{(peak - base) / size:+.2f}",
                             mib(rss)) for label, peak, rss, t in phases if t >= 0.005],
                           ("phase (ends when)", "time", "peak", "peak-start / file", "RSS after")))
    met = lambda ratio: "met" if ratio < 1 else "NOT met"
    print(f"target: time under {TARGET_S:.0f} s {met(med['wall_s'] / TARGET_S)}; peak memory under "
          f"{TARGET_MEMORY:g}x the file {met(med['maxrss'] / (TARGET_MEMORY * size))} (above "
          f"start-up: {met((med['write_hwm'] - med['baseline_hwm']) / (TARGET_MEMORY * size))})")
    path = common.write_results("bench_import", dict(
        params=n_params, file_bytes=size, runs=a.runs,
        median={k: round(v, 3) if isinstance(v, float) else v for k, v in med.items()},
        time_ratio=round(med["wall_s"] / TARGET_S, 3),
        memory_ratio=round(med["maxrss"] / (TARGET_MEMORY * size), 3),
        memory_above_startup_ratio=round((med["write_hwm"] - med["baseline_hwm"])
                                         / (TARGET_MEMORY * size), 3),
        phases=[(label, peak, rss, round(t, 3)) for label, peak, rss, t in phases]),
        small=a.small)
    print(f"figures appended to {os.path.relpath(path, common.REPO)}")


if __name__ == "__main__":
    main()
