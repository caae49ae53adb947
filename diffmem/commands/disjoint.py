"""Kadkhodaie et al.'s two-disjoint-sets study: train the S1 and S2 model of every N, sample both
from the same seeds, compare (similarity histograms, the four-row grid, train / test PSNR vs N).
Reruns resume.

    python bin/disjoint.py --config=configs/kadkhodaie.py:data=digits,n=1+10+100+898
        --workdir=runs/kad-digits
    python bin/disjoint.py --config=configs/kadkhodaie.py:data=calpha,alpha=2,size=32,n=1+10
        --workdir=runs/kad-ca

Writes <workdir>/S1, <workdir>/S2 (one trainer workdir per side) and <workdir>/disjoint/ (report.md,
figures, summary.json, N<N>.npz).
"""
import os
import sys

os.environ.setdefault("MPLBACKEND", "Agg")  # figures go to files; before matplotlib loads

from absl import flags

from diffmem import cli

__all__ = ["main", "run"]

flags.DEFINE_string("workdir", None, "Directory of the study (S1/, S2/, disjoint/).")
flags.DEFINE_integer("num_samples", 0, "Samples per model (0 = config.sample.num).")
flags.DEFINE_bool("progress", True, "Show progress bars.")
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS


def main(argv):
    from diffmem.studies import disjoint

    summary = disjoint.run_disjoint(
        cli.CONFIG, FLAGS.workdir, num_samples=FLAGS.num_samples or None, progress=FLAGS.progress
    )
    for row in summary["rows"]:
        print(row)


def run() -> None:
    """`diffmem-disjoint` and `python bin/disjoint.py`: parse the flags, then run `main`
    (`diffmem.cli.run`)."""
    cli.run(main, sys.argv, needs_config=True, module=__name__)


if __name__ == "__main__":
    run()
