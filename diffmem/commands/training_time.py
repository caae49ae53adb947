"""Memorization vs training time (Bonnaire et al. 2025): f_mem at log-spaced snapshots of every K,
tau_mem(K) and
its fits tau_mem = c K and c K^alpha, figures and report under <workdir>/training_time/.

    python bin/training_time.py --config=configs/gmm.py:k=64+256+1024,dim=8,steps=20000
        --workdir=runs/tt
    # measure an existing workdir again
    python bin/training_time.py --workdir=runs/tt --level=0.3
    python bin/training_time.py --workdir=runs/tt --sample_steps=500     # EM with 500 steps
    python bin/training_time.py --workdir=runs/digits --num_samples=128 # the checkpoints a workdir
        already has

With --config the sweep is trained (or resumed) keeping --snapshots log-spaced checkpoints
(config.monitor.snapshots). Finished snapshots are never sampled again.
"""
import os
import sys

os.environ.setdefault("MPLBACKEND", "Agg")  # figures go to files; before matplotlib loads

from absl import flags

from diffmem import cli, config_schema

__all__ = ["main", "run"]

flags.DEFINE_string("workdir", None, "Workdir of the sweep (with --config: trained into it first).")
flags.DEFINE_integer(
    "snapshots", 12, "Log-spaced snapshot checkpoints to keep when training with --config."
)
flags.DEFINE_float(
    "level", 0.5, "tau_mem: the first step with f_mem >= level (interpolated in log step)."
)
flags.DEFINE_integer("num_samples", 256, "Samples per snapshot (fixed seeds 0..num_samples-1).")
flags.DEFINE_enum(
    "sampler",
    None,
    sorted(config_schema.SAMPLER_SETTINGS),
    "Default: the config's sampler (DDPM ancestral "
    "replaced by DDIM 100 steps, as Bonnaire et al.).",
)
flags.DEFINE_integer(
    "sample_steps", None, "Sampler steps (num_steps; training steps are the config's steps=)."
)
flags.DEFINE_integer("bootstrap", 1000, "Bootstrap resamples for the error bars.")
flags.DEFINE_integer("seed", 0, "Bootstrap seed.")
flags.DEFINE_list("k", None, "Only these models (names = K), default all.")
flags.DEFINE_bool("overwrite", False, "Replace snapshot results of other settings.")
flags.DEFINE_bool("progress", True, "Show progress bars.")
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS


def main(argv):
    from diffmem.studies import training_time
    kw = dict(level=FLAGS.level, num_samples=FLAGS.num_samples, sampler=FLAGS.sampler,
              num_steps=FLAGS.sample_steps, num_bootstrap=FLAGS.bootstrap, seed=FLAGS.seed,
              overwrite=FLAGS.overwrite, progress=FLAGS.progress)
    if cli.CONFIG is not None:
        out = training_time.run(
            cli.CONFIG, FLAGS.workdir, num_snapshots=FLAGS.snapshots, names=FLAGS.k, **kw
        )
    else:
        out = training_time.study_section(FLAGS.workdir, FLAGS.k, **kw)
    print(out["markdown"])
    for path in out["figures"]:
        print(path)


def run() -> None:
    """`diffmem-training-time` and `python bin/training_time.py`: parse the flags, then run `main`
    (`diffmem.cli.run`)."""
    cli.run(main, sys.argv, module=__name__)


if __name__ == "__main__":
    run()
