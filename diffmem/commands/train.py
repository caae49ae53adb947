"""Train the models of a config (one model, or a whole K / seed sweep) into a workdir; reruns
resume.

    python bin/train.py --config=configs/circle.py:k=9 --workdir=runs/c9
    python bin/train.py --config=configs/circle.py:k=1000 --config.optim.lr=2e-4
        --workdir=runs/c1000
    # small toy batches: 1 thread
    python bin/train.py --config=configs/circle.py:k=9 --workdir=runs/c9 --cpu_policy
"""
import os
import sys

os.environ.setdefault("MPLBACKEND", "Agg")  # figures go to files; before matplotlib loads

from absl import flags

from diffmem import cli

__all__ = ["main", "run"]

flags.DEFINE_string(
    "workdir", None, "Directory of the experiment (config.json, metrics.jsonl, checkpoints/)."
)
flags.DEFINE_bool("progress", True, "Show a progress bar.")
flags.DEFINE_bool(
    "cpu_policy",
    False,
    "Opt in to diffmem's CPU policy (diffmem/cpu_parallel.py): a toy config whose "
    "batches are all small trains on one XLA thread (faster on a multi-core CPU). Samples never "
    "depend on it; resume a run with the same choice.",
)
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS


def main(argv):
    from diffmem import train
    if FLAGS.cpu_policy:
        train.use_one_cpu_thread_if_small(cli.CONFIG)  # before JAX starts; see diffmem.cpu_parallel
    train.train(cli.CONFIG, FLAGS.workdir, progress=FLAGS.progress)


def run() -> None:
    """`diffmem-train` and `python bin/train.py`: parse the flags, then run `main`
    (`diffmem.cli.run`)."""
    cli.run(main, sys.argv, needs_config=True, module=__name__)


if __name__ == "__main__":
    run()
