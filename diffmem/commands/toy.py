"""The circle study: train (or reuse), sample, cluster, energies, figures and report in
workdir/study/.

    python bin/toy.py --config=configs/circle.py:k=2+9+1000 --workdir=runs/circle

Classes use scale-free thresholds calibrated on fresh circle points (delta_m = the 10% quantile of
their distances to the nearest training point; diffmem/studies/circle.py); the tutorial's fixed
thresholds are reported beside. Prints the per-K sample fractions (95% bootstrap intervals) and the
published checks.
"""
import os
import sys

os.environ.setdefault("MPLBACKEND", "Agg")  # figures go to files; before matplotlib loads

from absl import flags

from diffmem import cli

__all__ = ["main", "run"]

flags.DEFINE_string("workdir", None, "Workdir of the study (training runs are reused).")
flags.DEFINE_bool("progress", True, "Show progress bars.")
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS


def main(argv):
    import json

    from diffmem.studies import circle
    from diffmem.workdir import Workdir
    summary = circle.run(cli.CONFIG, FLAGS.workdir, progress=FLAGS.progress)
    for name, m in summary["models"].items():
        t, ci = m["thresholds"], m["fractions_ci"]
        print(
            f"K={m['k']}: delta_m {t['delta_m']:.3g}, spread scale {t['spread_scale']:.3g}; "
            + ", ".join(
                f"{c} {m['fractions'][c]:.3f} [{ci[c][0]:.3f}, {ci[c][1]:.3f}]"
                for c in circle.KINDS
            )
            + f"; tutorial thresholds: memorized "
              f"{m['tutorial']['sample_fraction']['memorized']:.3f}"
        )
    print(json.dumps(summary["checks"], indent=2))
    print(f"report: {Workdir(FLAGS.workdir).study_dir('report.md')}")


def run() -> None:
    """`diffmem-toy` and `python bin/toy.py`: parse the flags, then run `main`
    (`diffmem.cli.run`)."""
    cli.run(main, sys.argv, needs_config=True, module=__name__)


if __name__ == "__main__":
    run()
