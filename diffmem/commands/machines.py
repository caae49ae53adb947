"""Analytic local score machines against the trained models of a workdir (diffmem.machines).

    python bin/machines.py calibrate --workdir=runs/digits --machine=els          # k(sigma) per K
    python bin/machines.py agreement --workdir=runs/digits --machines=ideal,els,bbels,wiener \\
        --seeds=0-15
    # how local is the optimum?
    python bin/machines.py agreement --workdir=runs/digits --network=optimal

calibrate: per noise level, the patch size (PSPC-flex: tau) whose machine is closest (MSE) to the
network's denoiser on noised training images; writes machines/calibration/<K>_<machine>.json.
agreement: calibrates, then compares samples from the same seeds and denoiser outputs (median r, r^2
per K); writes machines/agreement/<K>.json, agreement_vs_k.png, calibration.png and
machines/report.md.
"""
import os
import sys

os.environ.setdefault("MPLBACKEND", "Agg")  # figures go to files; before matplotlib loads

from absl import flags

from diffmem import cli
from diffmem.machines import agreement
from diffmem.machines.models import MACHINES

__all__ = ["main", "run"]

flags.DEFINE_string("workdir", None, "Workdir written by bin/train.py.")
flags.DEFINE_enum(
    "machine", "els", list(MACHINES), "The machine to calibrate (and to calibrate for agreement)."
)
flags.DEFINE_list("machines", list(agreement.DEFAULT_MACHINES),
                  "agreement: the machines to compare with the network.")
flags.DEFINE_list("k", None, "Only these models (names = K), default all.")
flags.DEFINE_enum("network", "trained", ["trained", "optimal"],
                  "Compare with the trained model or the empirical optimum.")
flags.DEFINE_list(
    "candidates",
    None,
    "Patch sizes (or PSPC-flex thresholds) to try; default: odd sizes up to the image.",
)
flags.DEFINE_list(
    "sigmas", None, "Noise levels of the calibration; default 10 log-spaced over the model's range."
)
flags.DEFINE_integer("images", 16, "Noised training images per noise level.")
flags.DEFINE_enum(
    "on", "train", ["train", "heldout"], "agreement: noise training or held-out images."
)
flags.DEFINE_string("seeds", "0-15",
                    "agreement: the seeds of the sample comparison ('0-15', '0,5,7').")
flags.DEFINE_string("sampler", "edm_euler", "agreement: the deterministic sampler both sides run.")
flags.DEFINE_integer("sample_steps", 18, "agreement: sampler steps.")
flags.DEFINE_integer("chunk", None, "Training images per streamed chunk (default: automatic).")
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS


def main(argv):
    from diffmem.errors import InputError
    from diffmem.seeds import parse_seeds
    seeds = parse_seeds(FLAGS.seeds)
    from diffmem.machines import calibration
    if len(argv) != 2 or argv[1] not in ("calibrate", "agreement"):
        raise InputError("Say what to do: bin/machines.py calibrate|agreement --workdir=...")
    num = lambda xs, f: None if xs is None else [f(x) for x in xs]
    cand = num(FLAGS.candidates, lambda c: float(c) if FLAGS.machine == "pspc_flex" else int(c))
    common = dict(candidates=cand, sigmas=num(FLAGS.sigmas, float), num_images=FLAGS.images,
                  chunk=FLAGS.chunk, network=FLAGS.network)
    if argv[1] == "calibrate":
        for name, res in calibration.calibrate_workdir(
            FLAGS.workdir, FLAGS.k, FLAGS.machine, **common
        ).items():
            print(
                f"K={name}: k(sigma) {res['schedule']['values']} r^2 "
                f"{[round(v, 3) for v in res['r2']]}"
            )
    else:
        print(
            agreement.write_report(FLAGS.workdir, FLAGS.k, machines=FLAGS.machines,
                                   calibrate_machine=FLAGS.machine, images=FLAGS.on, seeds=seeds,
                                   sampler=FLAGS.sampler, num_steps=FLAGS.sample_steps, **common)
        )


def run() -> None:
    """`diffmem-machines` and `python bin/machines.py`: parse the flags, then run `main`
    (`diffmem.cli.run`)."""
    cli.run(main, sys.argv, module=__name__)


if __name__ == "__main__":
    run()
