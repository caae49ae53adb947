"""Sample the models of a workdir into sample shards samples/<K>/ and a picture (skips seeds already
sampled).

    python bin/sample.py --workdir=runs/c9 --num=1500 --sampler=em --seed=0
    python bin/sample.py --workdir=runs/c9 --seeds=0-99 --sampler=em --sample_steps=500
    python bin/sample.py --workdir=runs/circle --seeds=0-1499 --sampler=ode --k=9
    python bin/sample.py --workdir=runs/digits --seeds=0-49999 --batch=512 --sampler=ddpm_ancestral
    python bin/sample.py --workdir=runs/digits --seeds=0-499 --kind=optimal  # the empirical optimum
    python bin/sample.py --config=configs/digits.py:k=64 --kind=optimal --workdir=runs/opt64

Sample i depends only on seed i. Jobs with disjoint --seeds ranges, one after another or at the same
time, each add their own shard to the workdir; every later stage reads the union (the same as one
job). Batches are sharded over all devices and saved as they finish, so a killed job resumes.
"""
import os
import sys

os.environ.setdefault("MPLBACKEND", "Agg")  # figures go to files; before matplotlib loads

from absl import flags

from diffmem import cli, config_schema

__all__ = ["main", "run"]

flags.DEFINE_string("workdir", None,
                    "Workdir written by bin/train.py (or a new one with --config --kind=optimal).")
flags.DEFINE_integer("num", 1500,
                     "Number of samples (seeds seed .. seed + num - 1) unless --seeds is given.",
                     lower_bound=1)
flags.DEFINE_integer("seed", 0, "First seed.", lower_bound=0)
flags.DEFINE_string("seeds", None, "Explicit seeds: '0-49999' or '0,1,5' (overrides --num/--seed).")
flags.DEFINE_enum("sampler", None, sorted(config_schema.SAMPLER_SETTINGS), "Default: the config's "
                  "sample.sampler (the samplers: diffmem.sampling.SAMPLERS).")
flags.DEFINE_integer("sample_steps", None, "Sampler steps (num_steps; default the config's "
                     "sample.num_steps for its own sampler, else the sampler's: ddim 50, edm 18, "
                     "em 1000).")
flags.DEFINE_float("eta", None, "DDIM eta (default 0 = deterministic).")
flags.DEFINE_enum("kind", "trained", ["trained", "optimal"],
                  "trained (EMA weights) | optimal (empirical optimal denoiser of each training "
                  "set; with --config it needs no training).")
flags.DEFINE_integer(
    "step", None, "Sample this checkpoint step instead of the latest (set samples/K@step/)."
)
flags.DEFINE_integer("batch", None, "Seeds per sharded call (default: the config's sample.batch).")
flags.DEFINE_float(
    "eps", None, "Last time of the toy samplers (default: the config's sample.eps, else t_min)."
)
flags.DEFINE_list("k", None, "Only these models (names = K), default all.")
flags.DEFINE_bool("overwrite", False, "Replace the sample files of other settings.")
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS


def main(argv):
    from diffmem.seeds import parse_seeds  # no JAX yet: a bad range is refused at once

    seeds = parse_seeds(
        FLAGS.seeds if FLAGS.seeds is not None else f"{FLAGS.seed}-{FLAGS.seed + FLAGS.num - 1}"
    )

    from diffmem import generate
    for path in generate.sample_workdir(FLAGS.workdir, seeds, FLAGS.sampler, names=FLAGS.k,
                                        model=FLAGS.kind, step=FLAGS.step, config=cli.CONFIG,
                                        num_steps=FLAGS.sample_steps, eps=FLAGS.eps, eta=FLAGS.eta,
                                        overwrite=FLAGS.overwrite, batch=FLAGS.batch):
        print(path)


def run() -> None:
    """`diffmem-sample` and `python bin/sample.py`: parse the flags, then run `main`
    (`diffmem.cli.run`)."""
    cli.run(main, sys.argv, module=__name__)


if __name__ == "__main__":
    run()
