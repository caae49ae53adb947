"""Pham et al.'s relative energy along x(a) = cos(a) x + sin(a) r from samples x of each class to
their nearest training image r (DDPM force at step 0, std_0 from alpha_bar), with barriers; into
mechanisms/energy/<K>.npz and energy.png.

    # needs bin/classify.py's classes
    python bin/energy.py --workdir=runs/digits --per_class=32
    # toy: paths between training points
    python bin/energy.py --workdir=runs/c9
"""
import os
import sys

os.environ.setdefault("MPLBACKEND", "Agg")  # figures go to files; before matplotlib loads

from absl import flags

from diffmem import cli

__all__ = ["main", "run"]

flags.DEFINE_string("workdir", None,
                    "Workdir (bin/train.py; or a new one with --config and --kind=optimal).")
flags.DEFINE_enum("kind", "trained", ["trained", "optimal"],
                  "trained (EMA weights) | optimal (empirical denoiser).")
flags.DEFINE_list("k", None, "Only these models (names = K); default all.")
flags.DEFINE_integer(
    "per_class", 32, "Paths per class (the first of each class in Pham et al.'s order)."
)
flags.DEFINE_integer("points", 20, "Points along each path.")
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS


def main(argv):
    from diffmem.studies import mechanisms
    mechanisms.energy_profiles(FLAGS.workdir, names=FLAGS.k, kind=FLAGS.kind,
                               per_class=FLAGS.per_class, num=FLAGS.points, config=cli.CONFIG)


def run() -> None:
    """`diffmem-energy` and `python bin/energy.py`: parse the flags, then run `main`
    (`diffmem.cli.run`)."""
    cli.run(main, sys.argv, module=__name__)


if __name__ == "__main__":
    run()
