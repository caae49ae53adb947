"""Classify a workdir's samples per K: Gu et al.'s memorization ratio and Pham et al.'s memorized /
spurious / generalized classes, into workdir/classify/ (per-K .npz/.json, summary.json, report.md,
figures).

    # LPIPS if its weights load, else pixel; calibrated
    python bin/classify.py --workdir=runs/digits
    # Pham et al.'s 0.03 / 0.02
    python bin/classify.py --workdir=runs/digits --metric=lpips --thresholds=published
    python bin/classify.py --workdir=runs/digits --metric=pixel --delta_m=1.0 --delta_s=1.0
        --k=16,64

Calibrated thresholds (the default): delta_m / delta_s are the --quantile of held-out real images'
nearest-training and nearest-other distances (diffmem/metrics/calibration.py); with LPIPS the
published thresholds' fractions are reported beside. Finished K are skipped; new thresholds relabel
stored distances; a new metric recomputes.
"""
import os
import sys

os.environ.setdefault("MPLBACKEND", "Agg")  # figures go to files; before matplotlib loads

from absl import flags

from diffmem import cli

__all__ = ["main", "run"]

flags.DEFINE_string(
    "workdir",
    None,
    "Workdir with trained (or optimal-denoiser) models and their samples "
    "(bin/train.py, bin/sample.py).",
)
flags.DEFINE_enum(
    "metric",
    "auto",
    ["auto", "lpips", "pixel"],
    "Distance of Pham et al.'s d_m and d_s; auto: LPIPS "
    "when its weights load, else pixel L2 (the report says which).",
)
flags.DEFINE_enum(
    "thresholds",
    None,
    ["calibrated", "published", "given"],
    "How delta_m / delta_s are set; default: "
    "given when --delta_m/--delta_s are passed, else calibrated. published: Pham et al.'s LPIPS "
    "0.03 / 0.02.",
)
flags.DEFINE_float(
    "quantile", 0.01, "Calibrated thresholds: this quantile of held-out real images' distances."
)
flags.DEFINE_float(
    "delta_m", None, "Given thresholds: memorized iff d_m <= delta_m (in the metric's units)."
)
flags.DEFINE_float(
    "delta_s", None, "Given thresholds: spurious iff not memorized and d_s <= delta_s."
)
flags.DEFINE_list("k", None, "Only these models (names = K); default: every model with samples.")
flags.DEFINE_enum(
    "lpips_net", "alexnet", ["alexnet", "vgg16"], "LPIPS backbone (VGG16 belongs on accelerators)."
)
flags.DEFINE_integer("rows", 3, "Image-panel rows per class.")
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS


def main(argv):
    from diffmem.studies import memorization
    from diffmem.workdir import Workdir

    memorization.run(FLAGS.workdir, metric=FLAGS.metric, delta_m=FLAGS.delta_m,
                     delta_s=FLAGS.delta_s, thresholds=FLAGS.thresholds, quantile=FLAGS.quantile,
                     names=FLAGS.k, lpips_net=FLAGS.lpips_net, rows_per_class=FLAGS.rows)
    print(f"report: {Workdir(FLAGS.workdir).classify_file('report.md')}")


def run() -> None:
    """`diffmem-classify` and `python bin/classify.py`: parse the flags, then run `main`
    (`diffmem.cli.run`)."""
    cli.run(main, sys.argv, module=__name__)


if __name__ == "__main__":
    run()
