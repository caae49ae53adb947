"""One process of tests/test_multihost.py: train (with a resume), sample and k-NN a tiny circle
model.

    python tests/multihost_worker.py OUT WORKDIR [COORDINATOR NUM_PROCESSES PROCESS_ID]

With a coordinator it joins jax.distributed first, so the mesh spans every process's devices. Each
process saves what it got to OUT/result<process>.npz (test output, written by every process on
purpose); the workdir's shared files are written by process 0 alone.
"""
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config(steps: int):
    from diffmem import configlib
    c = configlib.load_config_file(os.path.join(REPO, "configs/circle.py") + f":k=9,steps={steps}")
    c.model.hidden, c.model.embed = 32, 16
    c.steps_per_call, c.log_every, c.ckpt_every = 50, 50, 100
    return c


def run(workdir: str, resume: bool = True) -> dict[str, np.ndarray]:
    """Everything the test compares: final parameters, samples and their k-NN among the training
    points. resume: train in two calls (100 steps, then resumed to 200) rather than one."""
    import jax

    from diffmem import builders, devices, multihost, report, sampling, train
    from diffmem.metrics import distances

    mesh = devices.data_mesh()
    if resume:
        train.train(config(100), workdir, mesh=mesh, progress=False)
    c = config(200)
    # resumes from the step-100 checkpoint
    states = train.train(c, workdir, mesh=mesh, progress=False)
    state = states["9"]
    out = {f"param{i}": multihost.to_host(x) for i, x in enumerate(jax.tree.leaves(state.params))}
    out |= {
        f"ema{i}": multihost.to_host(x) for i, x in enumerate(jax.tree.leaves(state.ema_params))
    }

    sde = builders.build_sde(c)
    spec = builders.model_specs(c)[0]
    score = builders.score_fn(c, builders.build_model(c, (2,)), state.ema_params)

    def sampler(seeds):
        x = sampling.tutorial_init(seeds, 2, sde)
        return sampling.euler_maruyama(score, sde, x, seeds, num_steps=10, eps=1e-3)

    samples = np.asarray(sampling.sample_sharded(sampler, np.arange(36), mesh))
    dists, idx = distances.knn(samples, spec.data, 3, mesh=mesh, query_tile=4, ref_tile=8)
    report.write_npz(os.path.join(workdir, "samples.npz"), samples=samples)  # process 0 only
    return out | {"samples": samples, "knn_dists": dists, "knn_idx": idx,
                  "num_devices": np.int64(mesh.devices.size),
                  "process_count": np.int64(jax.process_count())}


def read_metrics(workdir: str) -> list[dict]:
    from diffmem import report
    return report.read_jsonl(os.path.join(workdir, "metrics.jsonl"))


def main(argv):
    out, workdir, *cluster = argv[1:]
    from diffmem import multihost
    if cluster:
        coordinator, num_processes, process_id = cluster
        multihost.initialize(coordinator, int(num_processes), int(process_id), timeout_s=90)
    import jax
    result = run(workdir)
    np.savez(os.path.join(out, f"result{jax.process_index()}.npz"), **result)


if __name__ == "__main__":
    main(sys.argv)
