"""Zhang et al.'s RP and generalization scores per K between two sampled workdirs (same seeds).

    python bin/reproducibility.py --workdir=runs/digits_a --other=runs/digits_b --features=pixel
    python bin/reproducibility.py --workdir=runs/digits --other=optimal --features=lpips

Writes {<K>.<features>.json, summary.<features>.json, report.<features>.md,
scores_vs_k.<features>.png} in the workdir's reproducibility folder.
"""
import os
import sys

os.environ.setdefault("MPLBACKEND", "Agg")  # figures go to files; before matplotlib loads

from absl import flags

from diffmem import cli

__all__ = ["main", "run"]

flags.DEFINE_string("workdir", None, "Side a: a sampled workdir (bin/sample.py).")
flags.DEFINE_string(
    "other",
    "optimal",
    "Side b: another workdir sampled with the same seeds, or 'optimal' for "
    "side a's optimal-denoiser samples (bin/sample.py --kind=optimal).",
)
flags.DEFINE_enum(
    "features", "pixel", ["pixel", "lpips", "sscd"], "Feature space of the cosine similarities."
)
flags.DEFINE_float("threshold", 0.6, "Cosine-similarity threshold (Zhang et al.: 0.6).")
flags.DEFINE_list("k", None, "Only these models (names = K); default all sampled on both sides.")
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS


def main(argv):
    from diffmem.studies import reproducibility

    summary = reproducibility.run(FLAGS.workdir, FLAGS.other, features=FLAGS.features,
                                  threshold=FLAGS.threshold, names=FLAGS.k)
    for name, row in summary.items():
        print(f"K={name}: RP {row['rp']:.3f}  generalization a {row['generalization_a']:.3f}  "
              f"b {row['generalization_b']:.3f}  ({row['num_pairs']} pairs)")


def run() -> None:
    """`diffmem-reproducibility` and `python bin/reproducibility.py`: parse the flags, run `main`
    (`diffmem.cli.run`)."""
    cli.run(main, sys.argv, module=__name__)


if __name__ == "__main__":
    run()
