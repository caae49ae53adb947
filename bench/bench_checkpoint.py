"""The cost of a checkpoint's checksums: saving the digits UNet's training state (params, EMA
params, Adam moments, step) with diffmem's `checkpoint.save` (per-leaf sha256 of the host arrays and
the training config in the step's metadata, plus the free-space check) against orbax's plain save of
the same tree, interleaved in one run, each to the point where the step is complete on disk; and a
verified restore against a plain one.

    python bench/bench_checkpoint.py              # configs/digits.py's DDPM UNet, 8 rounds
    python bench/bench_checkpoint.py --rounds=3   # quicker

Target (issue 23): the checksums cost under 5% of a checkpoint save. Figures are appended as one
JSON line to bench/results/bench_checkpoint.json.
"""
import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=os.path.join(common.REPO, "configs", "digits.py") + ":k=64")
    ap.add_argument("--rounds", type=int, default=8)
    a = ap.parse_args()

    import jax
    import numpy as np
    import orbax.checkpoint as ocp

    from diffmem import builders, checkpoint, configlib, train
    from diffmem.workdir import config_as_json

    config = configlib.load_config_file(a.config)
    spec = builders.model_specs(config)[0]
    model = builders.build_model(config, spec.data.shape[1:])
    state = train.init_state(model, builders.build_optimizer(config), spec).as_dict()
    nbytes = sum(np.asarray(x).nbytes for x in jax.tree.leaves(state))
    record = config_as_json(config)
    root = tempfile.mkdtemp(prefix="bench_checkpoint_")
    plain = ocp.CheckpointManager(
        os.path.join(root, "plain"), options=ocp.CheckpointManagerOptions(max_to_keep=2)
    )
    ours = checkpoint.manager(root, "64", 2)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)

    def save_plain(step):
        plain.save(step, args=ocp.args.StandardSave(state))
        plain.wait_until_finished()

    def save_ours(step):
        checkpoint.save(ours, step, state, config=record)
        checkpoint.wait(ours)

    def timed(fn, step):
        t = time.perf_counter()
        fn(step)
        return time.perf_counter() - t

    save_plain(1), save_ours(1)  # warm-up: first saves set up orbax's threads and directories
    times = {"plain save": [], "diffmem save": [], "sha256 alone": [], "plain restore": [],
             "diffmem restore": []}
    for r in range(2, 2 + a.rounds):
        times["plain save"].append(timed(save_plain, r))
        times["diffmem save"].append(timed(save_ours, r))
        times["sha256 alone"].append(timed(lambda _: checkpoint.tree_sha256(state), r))
        times["plain restore"].append(
            timed(lambda s: plain.restore(s, args=ocp.args.StandardRestore(abstract)), r)
        )
        times["diffmem restore"].append(timed(lambda s: checkpoint.restore(ours, s, state), r))
    shutil.rmtree(root, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"checkpoint of the {config.model.name} network of {a.config.split('/')[-1]}: "
        f"{len(jax.tree.leaves(state))} "
        f"arrays, {nbytes / 2**20:.1f} MiB; medians of {a.rounds} interleaved rounds on "
        f"{common.machine()}, load "
        f"{os.getloadavg()[0]:.1f}"
    )
    print(f"{'what':<18} {'median s':>9} {'min s':>8} {'max s':>8}")
    for k, v in times.items():
        print(f"{k:<18} {med[k]:9.4f} {min(v):8.4f} {max(v):8.4f}")
    save_ratio = med["diffmem save"] / med["plain save"]
    restore_ratio = med["diffmem restore"] / med["plain restore"]
    print(
        f"diffmem / plain save: {save_ratio:.3f}, restore: {restore_ratio:.3f}; the sha256 of "
        f"every array is "
        f"{med['sha256 alone'] / med['plain save']:.1%} of a plain save (target < 5%); on a loaded "
        f"machine the "
        "ratios carry the noise of the file system, the sha256 share does not"
    )
    os.makedirs(os.path.join(common.REPO, "bench", "results"), exist_ok=True)
    with open(os.path.join(common.REPO, "bench", "results", "bench_checkpoint.json"), "a") as f:
        f.write(
            json.dumps(
                {"time": time.strftime("%Y-%m-%d %H:%M"), "machine": common.machine(),
                 "config": a.config.split("/")[-1], "mib": round(nbytes / 2**20, 2),
                 "median_s": {k: round(v, 5) for k, v in med.items()},
                 "save_ratio": round(save_ratio, 4), "restore_ratio": round(restore_ratio, 4)}
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
