#!/usr/bin/env python
"""Sample the trained models of a workdir into samples/<K>.npz and a picture (skips finished files).

    python bin/sample.py --workdir=runs/c9 --num=1500 --sampler=em --seed=0
    python bin/sample.py --workdir=runs/circle --seeds=0-1499 --sampler=ode --k=9
    python bin/sample.py --workdir=runs/digits --seeds=0-49999 --batch=512 --sampler=ddpm
    python bin/sample.py --workdir=runs/digits --seeds=0-499 --model=optimal     # the empirical optimum

Sample i depends only on seed i, so seed ranges can be split across jobs; batches are sharded over all
devices and saved as they finish, so a killed run resumes.
"""
import sys

from absl import flags

from diffmem import cli

flags.DEFINE_string("workdir", None, "Workdir written by bin/train.py.")
flags.DEFINE_integer("num", 1500, "Number of samples (seeds seed .. seed + num - 1) unless --seeds is given.")
flags.DEFINE_integer("seed", 0, "First seed.")
flags.DEFINE_string("seeds", None, "Explicit seeds: '0-49999' or '0,1,5' (overrides --num/--seed).")
flags.DEFINE_string("sampler", None, "em | ode (toy models); ddpm | ddim | edm_euler | edm_heun (image models). "
                    "Default: the config's sample.sampler.")
flags.DEFINE_integer("steps", None, "Sampler steps (toy: default the config's sample.num_steps; ddim 50; edm 18).")
flags.DEFINE_float("eta", 0.0, "DDIM eta (0 = deterministic).")
flags.DEFINE_string("model", "trained", "trained (EMA weights) | optimal (empirical optimal denoiser of each "
                    "training set).")
flags.DEFINE_integer("step", None, "Sample this checkpoint step instead of the latest (writes samples/K@step.npz).")
flags.DEFINE_integer("batch", None, "Seeds per sharded call (default: the config's sample.batch).")
flags.DEFINE_float("eps", None, "Last time of the toy samplers (default: the config's sample.eps, 1e-5 as the tutorial).")
flags.DEFINE_list("k", None, "Only these models (names = K), default all.")
flags.DEFINE_bool("overwrite", False, "Replace existing sample files that differ.")
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS


def main(argv):
    import numpy as np

    from diffmem import generate
    seeds = generate.parse_seeds(FLAGS.seeds) if FLAGS.seeds else np.arange(FLAGS.seed, FLAGS.seed + FLAGS.num)
    for path in generate.sample_workdir(FLAGS.workdir, seeds, FLAGS.sampler, names=FLAGS.k, model=FLAGS.model,
                                        step=FLAGS.step, num_steps=FLAGS.steps, eps=FLAGS.eps, eta=FLAGS.eta,
                                        overwrite=FLAGS.overwrite, batch=FLAGS.batch):
        print(path)


if __name__ == "__main__":
    cli.run(main, sys.argv)
