#!/usr/bin/env python
"""The circle study: train (or reuse), sample, cluster, energies, figures and report in workdir/study/.

    python bin/toy.py --config=configs/circle.py:k=2+9+1000 --workdir=runs/circle
"""
import sys

from absl import flags

from diffmem import cli

flags.DEFINE_string("workdir", None, "Workdir of the study (training runs are reused).")
flags.DEFINE_bool("progress", True, "Show progress bars.")
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS


def main(argv):
    import json
    import os

    from diffmem.studies import circle
    from diffmem.workdir import Workdir
    summary = circle.run(cli.CONFIG, FLAGS.workdir, progress=FLAGS.progress)
    print(json.dumps(summary["checks"], indent=2))
    print(f"report: {os.path.join(Workdir(FLAGS.workdir).study_dir(), 'report.md')}")


if __name__ == "__main__":
    cli.run(main, sys.argv, needs_config=True)
