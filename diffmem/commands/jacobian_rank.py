"""Zhang et al.'s Jacobian rank vs SNR of a workdir's models (99% Frobenius rule, float64), with the
data-only speciation / collapse SNRs and, for MoLRG configs, the analytic population denoiser; into
mechanisms/jacobian/<K>.npz and rank_vs_snr.png.

    python bin/jacobian_rank.py --workdir=runs/molrg --states=trajectory --latents=16
    python bin/jacobian_rank.py --workdir=runs/digits --states=forward --latents=32
        --sigmas=0.002,0.1,1,10,80
    python bin/jacobian_rank.py --config=configs/molrg.py:k=64 --workdir=runs/molrg-opt
        --kind=optimal
"""
import os
import sys

os.environ.setdefault("MPLBACKEND", "Agg")  # figures go to files; before matplotlib loads

from absl import flags

from diffmem import cli

__all__ = ["main", "run"]

flags.DEFINE_string("workdir", None,
                    "Workdir (bin/train.py; or a new one with --config and --kind=optimal).")
flags.DEFINE_enum(
    "states",
    "trajectory",
    ["trajectory", "forward"],
    "trajectory: the 18 pre-step states of EDM "
    "Heun (80 -> 0.002); forward: x = y + sigma e for training images y on --sigmas.",
)
flags.DEFINE_enum("kind", "trained", ["trained", "optimal"],
                  "trained (EMA weights) | optimal (empirical denoiser).")
flags.DEFINE_list("k", None, "Only these models (names = K); default all.")
flags.DEFINE_integer(
    "latents", 8, "Trajectories (or training images for forward states) per model."
)
flags.DEFINE_list("subset", None, "Indices of the 18 trajectory states to keep (default all).")
flags.DEFINE_list("sigmas", None, "Sigma grid of forward states (default: the EDM-18 grid).")
flags.DEFINE_integer("seed", 0, "Latent / noise seed.")
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS


def main(argv):
    from diffmem.studies import mechanisms
    mechanisms.rank_vs_snr(FLAGS.workdir, names=FLAGS.k, kind=FLAGS.kind, states=FLAGS.states,
                           num_latents=FLAGS.latents,
                           subset=[int(i) for i in FLAGS.subset or []] or None,
                           sigmas=[float(s) for s in FLAGS.sigmas or []] or None, seed=FLAGS.seed,
                           config=cli.CONFIG)


def run() -> None:
    """`diffmem-jacobian-rank` and `python bin/jacobian_rank.py`: parse the flags, then run `main`
    (`diffmem.cli.run`)."""
    cli.run(main, sys.argv, module=__name__)


if __name__ == "__main__":
    run()
