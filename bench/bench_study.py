"""Where the time of the one-command K-sweep study goes: every stage of `bin/study.py` timed (wall
and CPU).

    # the --quick preset on digits (target <= 5 min on 2 cores)
    python bench/bench_study.py
    # the full digits study, K = 2, 8, 32, 128, 512, 1797 (<= 30 min)
    python bench/bench_study.py --full
    python bench/bench_study.py --config=configs/fmnist.py:cpu=1,k=10+100+1000
        --workdir=runs/bench-fmnist

Each stage runs as `k_sweep.run(config, workdir, stages=(stage,))` in turn, in one fresh workdir
(the same process, so compilations are counted where they happen, as in one `bin/study.py` run), and
is timed by the wall clock and by this process's CPU time (user + system, all threads): on a shared
machine the wall time is inflated by other jobs, CPU time much less so. The load average before and
after is printed beside. Results: bench/results/bench_study.txt (appended to the table of earlier
runs is not done: each run rewrites the file with its own figures and the machine it ran on).
"""
import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

FULL = "configs/digits.py:k=2+8+32+128+512+1797"
QUICK = "configs/digits.py"


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main():
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--full", action="store_true", help=f"the full study ({FULL}) instead of --quick"
    )
    p.add_argument(
        "--config", default=None, help="another config (path[:arg]); --quick unless --full"
    )
    p.add_argument(
        "--workdir", default=None, help="keep the run here (default: a temporary folder, removed)"
    )
    p.add_argument(
        "--out", default=os.path.join(common.REPO, "bench", "results", "bench_study.txt")
    )
    args = p.parse_args()

    from diffmem import configlib
    from diffmem.studies import k_sweep
    spec = args.config or (FULL if args.full else QUICK)
    config = configlib.load_config_file(os.path.join(common.REPO, spec))
    quick = not args.full
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench_study_")
    load0 = os.getloadavg()
    rows, t_all, c_all = [], time.perf_counter(), cpu_seconds()
    try:
        for stage in k_sweep.DEFAULT_STAGES:
            t, c = time.perf_counter(), cpu_seconds()
            rep = k_sweep.run(
                config, workdir, stages=(stage,), quick=quick, progress=False, log=None
            )
            rows.append((stage, rep.statuses[stage], time.perf_counter() - t, cpu_seconds() - c))
            print(
                f"{stage:16s} {rows[-1][1]:9s} wall {rows[-1][2]:7.1f} s  cpu {rows[-1][3]:7.1f} s",
                flush=True,
            )
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    wall, cpu = time.perf_counter() - t_all, cpu_seconds() - c_all
    load1 = os.getloadavg()
    target = 300 if quick else 1800
    lines = [
        f"# bench_study: {spec}{' --quick' if quick else ''}  "
        f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        f"# machine: {common.machine()}",
        f"# load average (1, 5, 15 min) before {tuple(round(v, 1) for v in load0)}, after "
        f"{tuple(round(v, 1) for v in load1)}: a shared machine; wall times include waiting for "
        f"other jobs",
        "",
        common.table(
            [(s, st, f"{w:.1f}", f"{c:.1f}", f"{100 * w / wall:.0f}%") for s, st, w, c in rows],
            ("stage", "status", "wall s", "cpu s", "share of wall"),
        ),
        "",
        f"total wall {wall:.1f} s (target <= {target} s: "
        f"{'met' if wall <= target else 'NOT met'}), "
        f"cpu {cpu:.1f} s ({cpu / max(wall, 1e-9):.2f} cores busy on average)",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump(
            dict(spec=spec, quick=quick, wall_s=wall, cpu_s=cpu, load_before=load0,
                 load_after=load1,
                 stages=[dict(stage=s, status=st, wall_s=w, cpu_s=c) for s, st, w, c in rows]),
            f,
            indent=2,
        )


if __name__ == "__main__":
    main()
