"""The one-command K-sweep study: train (or reuse), sample, classify, reproducibility, disjoint
halves, Jacobian rank, critical times, speciation / collapse times, and a report (report.json,
report.md, self-contained report.html) in <workdir>/study/.

    python bin/study.py --config=configs/digits.py:k=2+8+32+128+512+1797 --workdir=runs/study
    # a few minutes on a CPU
    python bin/study.py --config=configs/digits.py --workdir=runs/study-quick --quick
    python bin/study.py --config=configs/fmnist.py:cpu=1,k=10+100+1000 --workdir=runs/fmnist-cpu
    python bin/study.py --config=configs/cifar10.py:k=500+1000+2000+4000,arch=ddpmpp,precond=vp
        --workdir=runs/cifar
    python bin/study.py --config=... --workdir=runs/study --stages=train,sample,classify,report

Every stage is resumable and skipped when done: a rerun does only what is missing. Stages: train,
sample, classify, reproducibility, disjoint, jacobian, critical_times, phase_times, report
(default), and the opt-in machines, training_time (diffmem.studies.k_sweep).
"""
import os
import sys

os.environ.setdefault("MPLBACKEND", "Agg")  # figures go to files; before matplotlib loads

from absl import flags

from diffmem import cli

__all__ = ["main", "run"]

flags.DEFINE_string(
    "workdir", None, "Where the models, samples and the study's outputs (study/) live."
)
flags.DEFINE_bool("quick", False,
                  "The quick preset: K = 8 and 128, 300 steps, 64 samples, small mechanism stages.")
flags.DEFINE_list(
    "stages", None, "Stages to run (default: all but the opt-in machines, training_time)."
)
flags.DEFINE_integer("samples", None, "Samples per model (default 256; --quick 64).")
flags.DEFINE_string(
    "sampler",
    None,
    "Sampler of every sample set (default auto: DDIM where the config samples with "
    "DDPM's 1000 steps, else the config's own; 'config': always the config's own).",
)
flags.DEFINE_integer("sample_steps", None, "Sampler steps (default 50; --quick 25).")
flags.DEFINE_integer(
    "steps",
    None,
    "Training steps of every sweep the study trains (default: 1000 for digits, the "
    "config's otherwise; 0: the config's own).",
)
flags.DEFINE_enum(
    "metric",
    None,
    ["auto", "lpips", "pixel"],
    "Classification distance (default auto: LPIPS when its weights load, else pixel L2).",
)
flags.DEFINE_list(
    "rank_ks", None, "The three K of the Jacobian stage (default: smallest, middle, largest)."
)
flags.DEFINE_bool(
    "overwrite",
    False,
    "When a stage's inputs changed (e.g. more training steps), replace the study's "
    "sample sets and mechanism files of other settings instead of stopping.",
)
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS


def main(argv):
    from diffmem.studies import k_sweep

    k_sweep.run(cli.CONFIG, FLAGS.workdir, stages=FLAGS.stages, quick=FLAGS.quick,
                num_samples=FLAGS.samples, sampler=FLAGS.sampler, sample_steps=FLAGS.sample_steps,
                steps=FLAGS.steps, metric=FLAGS.metric,
                rank_ks=[int(k) for k in FLAGS.rank_ks] if FLAGS.rank_ks else None,
                overwrite=FLAGS.overwrite)


def run() -> None:
    """`diffmem-study` and `python bin/study.py`: parse the flags, then run `main`
    (`diffmem.cli.run`)."""
    cli.run(main, sys.argv, needs_config=True, module=__name__)


if __name__ == "__main__":
    run()
