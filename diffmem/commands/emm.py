"""Effective model memorization (Gu et al.): the largest K whose memorization ratio is >= 90%,
bracketed on a K grid and bisected, one workdir per K under --root (root/k<K>); finished runs are
reused, missing ones are trained, sampled and classified. Writes root/emm.json with the bracket
history.

    python bin/emm.py --config=configs/digits.py --root=runs/emm --k_grid=16,64,256,1024 --num=1000
    python bin/emm.py --config=configs/digits.py --root=runs/emm --k_grid=16,64,256 --metric=pixel
        --delta_m=1.0 --delta_s=1.0 --tolerance=0
"""
import os
import sys

os.environ.setdefault("MPLBACKEND", "Agg")  # figures go to files; before matplotlib loads

from absl import flags

from diffmem import cli

__all__ = ["main", "run"]

flags.DEFINE_string("root", None, "Folder of the per-K workdirs (root/k<K>) and emm.json.")
flags.DEFINE_list("k_grid", None, "K values to bracket on, e.g. 250,500,1000,2000,4000.")
flags.DEFINE_float("level", 0.9, "Memorization level (Gu et al.: 0.9).")
flags.DEFINE_float("tolerance", 0.05,
                   "Stop bisecting at relative bracket width (hi - lo) / lo <= this; 0: exact K.")
flags.DEFINE_integer("num", None,
                     "Samples per model (seeds 0 .. num - 1); default the config's sample.num.",
                     lower_bound=1)
flags.DEFINE_string("seeds", None, "Explicit seeds, e.g. 0-9999 (overrides --num).")
flags.DEFINE_string("sampler", None, "Sampler (default: the config's sample.sampler).")
flags.DEFINE_enum(
    "metric",
    "auto",
    ["auto", "lpips", "pixel"],
    "Distance of Pham et al.'s classes (also reported); "
    "auto: LPIPS when its weights load, else pixel L2.",
)
flags.DEFINE_float(
    "delta_m",
    None,
    "Given thresholds: memorized iff d_m <= delta_m (default: calibrated on held-out "
    "images, diffmem/metrics/calibration.py).",
)
flags.DEFINE_float(
    "delta_s", None, "Given thresholds: spurious iff d_s <= delta_s (default: calibrated)."
)
flags.DEFINE_bool("progress", True, "Show training progress bars.")
flags.mark_flags_as_required(["root", "k_grid"])
FLAGS = flags.FLAGS


def main(argv):
    from diffmem.errors import InputError
    from diffmem.seeds import parse_seeds
    from diffmem.studies import memorization
    seeds = parse_seeds(FLAGS.seeds if FLAGS.seeds is not None else f"0-{FLAGS.num - 1}") \
        if FLAGS.seeds is not None or FLAGS.num is not None else None
    try:
        k_grid = [int(k) for k in FLAGS.k_grid]
    except ValueError:
        raise InputError(
            f"--k_grid={','.join(FLAGS.k_grid)}: give integers, e.g. --k_grid=250,500,1000."
        ) from None
    memorization.emm(FLAGS.root, cli.CONFIG, k_grid, seeds=seeds, sampler=FLAGS.sampler,
                     level=FLAGS.level, tolerance=FLAGS.tolerance, metric=FLAGS.metric,
                     delta_m=FLAGS.delta_m, delta_s=FLAGS.delta_s, progress=FLAGS.progress)


def run() -> None:
    """`diffmem-emm` and `python bin/emm.py`: parse the flags, then run `main`
    (`diffmem.cli.run`)."""
    cli.run(main, sys.argv, needs_config=True, module=__name__)


if __name__ == "__main__":
    run()
