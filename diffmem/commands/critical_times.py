"""Pham et al.'s critical times and basin radii of a workdir's samples, per K, into
mechanisms/critical_times/<samples>/<K>.npz (resumable: finished files are skipped) and a violin
figure.

    # LPIPS, delta 0.1
    python bin/critical_times.py --workdir=runs/digits --samples=memorized
    python bin/critical_times.py --workdir=runs/digits --samples=train --metric=l2 --delta=2.0
    # one shard
    python bin/critical_times.py --workdir=runs/digits --samples=generalized --start=0 --stop=256
    # toy: reverse EM scan
    python bin/critical_times.py --workdir=runs/c9 --samples=train --delta=0.1
    python bin/critical_times.py --config=configs/digits.py:k=16 --workdir=runs/opt16 \\
        --kind=optimal --samples=train --metric=l2 --delta=1.0                      # no training

Classes come from bin/classify.py (classify/<K>.npz), sorted as Pham et al. (memorized by d_m,
spurious by d_s, generalized by descending d_s); --start/--stop select a slice of that list, so jobs
can split the work.
"""
import os
import sys

os.environ.setdefault("MPLBACKEND", "Agg")  # figures go to files; before matplotlib loads

from absl import flags

from diffmem import cli

__all__ = ["main", "run"]

flags.DEFINE_string("workdir", None,
                    "Workdir (bin/train.py; or a new one with --config and --kind=optimal).")
flags.DEFINE_enum("samples", "memorized", ["memorized", "spurious", "generalized", "train"],
                  "Which samples: a class of bin/classify.py, or the training images.")
flags.DEFINE_enum("kind", "trained", ["trained", "optimal"],
                  "trained (EMA weights) | optimal (empirical denoiser).")
flags.DEFINE_list("k", None, "Only these models (names = K); default all.")
flags.DEFINE_integer("start", 0, "First sample of the sorted list (sharding).")
flags.DEFINE_integer("stop", None, "One past the last sample of the sorted list (default: all).")
flags.DEFINE_enum(
    "metric", "lpips", ["lpips", "l2"], "Recovery distance of image models (toy models: l2)."
)
flags.DEFINE_enum(
    "lpips_net", "alexnet", ["alexnet", "vgg16"], "LPIPS backbone (the README of Pham et al.: vgg)."
)
flags.DEFINE_float(
    "delta", None, "Recovered iff distance <= delta (LPIPS default 0.1; required for l2 / toy)."
)
flags.DEFINE_integer("trials", 10, "Noise draws per sample and time.")
flags.DEFINE_enum(
    "stop_rule",
    "per_sample",
    ["per_sample", "batch"],
    "per_sample (batch-independent) or batch "
    "(Pham et al.'s code: the scan of a batch stops when every sample's recovery rate is < 0.9).",
)
flags.DEFINE_integer("batch", 64, "Samples per batch of the 'batch' stop rule.")
flags.DEFINE_integer("seed", 0, "Noise seed.")
flags.DEFINE_integer("rows", 2048, "Network rows per call (samples x trials x times).")
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS


def main(argv):
    from diffmem.studies import mechanisms
    mechanisms.critical_times(FLAGS.workdir, samples=FLAGS.samples, names=FLAGS.k, kind=FLAGS.kind,
                              start=FLAGS.start, stop=FLAGS.stop, metric=FLAGS.metric,
                              lpips_net=FLAGS.lpips_net, delta=FLAGS.delta, trials=FLAGS.trials,
                              stop_rule=FLAGS.stop_rule, batch_size=FLAGS.batch, seed=FLAGS.seed,
                              rows_per_call=FLAGS.rows, config=cli.CONFIG)


def run() -> None:
    """`diffmem-critical-times` and `python bin/critical_times.py`: parse the flags, then run `main`
    (`diffmem.cli.run`)."""
    cli.run(main, sys.argv, module=__name__)


if __name__ == "__main__":
    run()
