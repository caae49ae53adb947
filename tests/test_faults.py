"""Bad input and faults fail fast with a clear message and lose nothing: damaged checkpoints,
config.json and metrics.jsonl, failed writes, two trainings into one workdir, and the CLI's error
exits. All cheap: no training step is compiled here (the kill-and-resume test is in
test_train.py)."""
import errno
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from diffmem import atomic, checkpoint, cli, configlib, lock, report, train
from diffmem.errors import DiffmemError, InputError, MissingInputError, WorkdirBusyError, WriteError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(steps=20):
    c = configlib.load_config_file(os.path.join(REPO, "configs/circle.py") + f":k=9,steps={steps}")
    c.steps_per_call, c.log_every, c.ckpt_every = 10, 10, 10
    return c


# -------------------------------------------------------------------------------------- checkpoints
@pytest.fixture
def saved_checkpoint(tmp_path):
    """A real orbax checkpoint of a small tree at step 10 of model "9" (no training needed)."""
    like = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "step": np.arange(1, dtype=np.int32)}
    mngr = checkpoint.manager(str(tmp_path), "9")
    checkpoint.save(mngr, 10, like)
    mngr.wait_until_finished()
    return tmp_path, like, os.path.join(checkpoint._dir(str(tmp_path), "9"), "10")


def _files(root):
    return [os.path.join(r, f) for r, _, fs in os.walk(root) for f in fs]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "missing_data", "empty_step"])
def test_damaged_checkpoint_is_a_checkpoint_error_naming_the_directory(saved_checkpoint, damage):
    workdir, like, step_dir = saved_checkpoint
    tree, step = checkpoint.restore_latest(str(workdir), "9", like)  # intact: reads back exactly
    np.testing.assert_array_equal(tree["w"], like["w"])
    for p in _files(step_dir):
        if damage == "truncate":
            os.truncate(p, os.path.getsize(p) // 2)
        elif damage == "garbage":
            open(p, "wb").write(b"\x00garbage")
        elif damage == "missing_data" and ("manifest" in p or "/d/" in p):
            os.remove(p)
    if damage == "empty_step":
        for p in _files(step_dir):
            os.remove(p)
    with pytest.raises(
        checkpoint.CheckpointError, match=r"cannot be read.*Delete that step directory"
    ) as e:
        checkpoint.restore_latest(str(workdir), "9", like)
    assert step_dir in str(e.value)


# ------------------------------------------------------------------------------- config and metrics
def test_corrupt_config_json_is_a_clear_error_and_is_left_alone(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"seed": 9, "data": {"na')  # cut short by a crash or a bad copy
    with pytest.raises(configlib.ConfigError, match="config.json") as e:
        train.train(tiny_config(), str(tmp_path), progress=False)
    assert str(path) in str(e.value) or "config.json" in str(e.value)
    assert path.read_text() == '{"seed": 9, "data": {"na'  # nothing overwritten


def test_truncated_last_metrics_line_is_dropped_with_a_warning(tmp_path):
    path = str(tmp_path / "metrics.jsonl")
    with open(path, "w") as f:
        # killed mid-line
        f.write('{"step": 10, "loss/9": 1.0}\n{"step": 20, "loss/9": 0.5}\n{"step": 30, "lo')
    with pytest.warns(UserWarning, match="truncated last line"):
        train._trim_metrics(path, 20)
    assert [r["step"] for r in report.read_jsonl(path)] == [10, 20]
    # A damaged line that is not the last is not a kill's trace: a clear error naming the line.
    with open(path, "w") as f:
        f.write('{"step": 10}\nnot json\n{"step": 20}\n')
    with pytest.raises(InputError, match="line 2"):
        report.read_jsonl(path)


def test_metrics_log_records_grad_norm_and_full_disk_is_a_write_error(tmp_path):
    with report.JsonlAppender(str(tmp_path / "m.jsonl")) as log:
        log.write({"step": 1, "grad_norm/9": np.float32(2.5)})
    assert report.read_jsonl(str(tmp_path / "m.jsonl")) == [{"step": 1, "grad_norm/9": 2.5}]
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    with pytest.raises(WriteError, match="/dev/full.*No space left"):
        with report.JsonlAppender("/dev/full") as log:  # writes fail with ENOSPC, as on a full disk
            log.write({"step": 1})


# ------------------------------------------------------------------------------------ atomic writes
def test_failed_write_names_the_path_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "result.json"
    report.write_json(str(path), {"a": 1})

    def full_disk(tmp):
        open(tmp, "w").write('{"a": ')
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(WriteError, match=f"Cannot write {path}: No space left on device"):
        atomic.write(str(path), full_disk)
    assert json.loads(path.read_text()) == {"a": 1}
    assert sorted(os.listdir(tmp_path)) == ["result.json"]  # no temporary left behind
    # An unwritable place (a directory under a plain file, as a read-only mount would refuse it).
    blocked = tmp_path / "result.json" / "sub" / "x.npz"
    with pytest.raises(WriteError, match="sub"):
        report.write_npz(str(blocked), a=np.zeros(2))
    with pytest.raises(WriteError, match="lock file"):
        train.train(tiny_config(), str(tmp_path / "result.json" / "run"), progress=False)


def test_read_npz_errors_are_diffmem_errors(tmp_path):
    with pytest.raises(MissingInputError):
        report.read_npz(str(tmp_path / "none.npz"))
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(InputError, match="truncated or corrupt"):
        report.read_npz(str(tmp_path / "bad.npz"))


# --------------------------------------------------------------------------------------------- lock
def test_second_training_into_a_busy_workdir_is_refused(tmp_path):
    workdir = str(tmp_path / "run")
    with lock.workdir_lock(workdir, "training"):  # as a first training would hold it
        with pytest.raises(WorkdirBusyError, match=rf"pid {os.getpid()}.*use another --workdir"):
            train.train(tiny_config(), workdir, progress=False)
        # Another process is refused too (flock is per open file, so this is what a second run
        # sees).
        code = (
            f"from diffmem import lock\ntry:\n    with lock.workdir_lock({workdir!r}): "
            f"print('GOT')\n"
            "except Exception as e: print(type(e).__name__)"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
        )
        assert out.stdout.strip() == "WorkdirBusyError", out.stderr
    assert not os.path.exists(os.path.join(workdir, "config.json"))  # the refused run wrote nothing
    with lock.workdir_lock(workdir):  # released on exit
        pass


def test_lock_left_by_a_killed_process_does_not_block(tmp_path):
    workdir = str(tmp_path)
    # A holder killed with SIGKILL: its lock file stays, with its pid, but the kernel dropped its
    # flock.
    code = (f"import os\nfrom diffmem import lock\nwith lock.workdir_lock({workdir!r}):\n"
            "    os.kill(os.getpid(), 9)")
    proc = subprocess.run([sys.executable, "-c", code], timeout=60)
    assert proc.returncode == -9
    info = json.loads(open(os.path.join(workdir, lock.LOCK_NAME)).read())
    assert info["pid"] != os.getpid()
    with lock.workdir_lock(workdir):
        assert json.loads(open(os.path.join(workdir, lock.LOCK_NAME)).read())["pid"] == os.getpid()


# ---------------------------------------------------------------------------------------------- CLI
def _cli(main, *args):
    with pytest.raises(SystemExit) as e:
        cli.run(main, ["prog", *args])
    return e.value.code


def test_cli_reports_diffmem_errors_and_lets_bugs_through():
    def user_error(argv):
        raise InputError("bad --thing: use 1..3")

    def bug(argv):
        raise KeyError("a bug")

    assert _cli(user_error, "--debug=false") == "error: bad --thing: use 1..3"
    with pytest.raises(KeyError):
        cli.run(bug, ["prog", "--debug=false"])
    with pytest.raises(InputError):  # --debug: the traceback
        cli.run(user_error, ["prog", "--debug"])
    assert issubclass(configlib.ConfigError, DiffmemError) and issubclass(
        train.TrainingDiverged, DiffmemError
    )
    assert issubclass(checkpoint.CheckpointError, DiffmemError)
    assert "--num_processes" in _cli(
        lambda argv: None, "--debug=false", "--coordinator=127.0.0.1:1"
    )


def test_distributed_start_after_jax_started_is_a_clear_error():
    import jax

    from diffmem import multihost
    jax.devices()  # JAX has computed: too late to join a cluster
    with pytest.raises(DiffmemError, match="before any JAX computation"):
        multihost.initialize("127.0.0.1:1", 2, 0, timeout_s=5)
    assert not jax.distributed.is_initialized()


def test_checkpoint_write_failure_is_a_write_error(tmp_path, monkeypatch, one_device):
    """orbax raises a bare OSError when checkpoints/ cannot be written (measured: NotADirectoryError
    on the step's temporary directory); training reports it naming the directory and what to do."""
    import orbax.checkpoint as ocp

    def full_disk(self, step, *args, **kwargs):
        raise OSError(
            errno.ENOSPC, "No space left on device", f"{self.directory}/{step}.orbax-checkpoint-tmp"
        )

    monkeypatch.setattr(ocp.CheckpointManager, "save", full_disk)
    c = tiny_config(steps=10)
    c.model.hidden, c.model.embed = 8, 8
    with pytest.raises(
        WriteError, match=r"Cannot write a checkpoint under .*checkpoints.*No space left"
    ):
        train.train(c, str(tmp_path), progress=False)


# ------------------------------------------------------------------------ bad input through the CLI
# Each row: (script, arguments) run as a user would (`python bin/<script> ...`). {W} is a trained
# workdir, {NEW} a path that does not exist yet, {FILE} a plain file, {C} configs/. Every row must
# end with exit status 1, exactly one stderr line starting with "error:", no traceback, and no file
# under {W} or {NEW} created or changed.
TINY = ["--config.steps=20", "--config.steps_per_call=10", "--config.log_every=10",
        "--config.ckpt_every=10", "--config.model.hidden=8", "--config.model.embed=8"]
BAD_INPUTS = [
    # config arg strings and files
    ("train.py", ["--config={C}/circle.py:kk=3", "--workdir={NEW}"]),
    ("train.py", ["--config={C}/circle.py:k=abc", "--workdir={NEW}"]),
    ("train.py", ["--config={C}/circle.py:k=0", "--workdir={NEW}"]),
    ("train.py", ["--config={C}/circle.py:k9", "--workdir={NEW}"]),
    ("train.py", ["--config={C}/nope.py", "--workdir={NEW}"]),
    ("train.py", ["--workdir={NEW}"]),  # no --config
    # config keys
    ("train.py", ["--config={C}/circle.py", "--config.optim.lrr=1", "--workdir={NEW}"]),
    ("train.py", ["--config={C}/circle.py", "--config.optim=1", "--workdir={NEW}"]),
    ("train.py", ["--config={C}/circle.py", "--config.optim.lr", "--workdir={NEW}"]),
    ("train.py", ["--config={C}/circle.py", "--config.nosection.x=1", "--workdir={NEW}"]),
    # config values
    ("train.py", ["--config={C}/circle.py", "--config.optim.lr=-1", "--workdir={NEW}"]),
    ("train.py", ["--config={C}/circle.py", "--config.seed=-1", "--workdir={NEW}"]),
    ("train.py", ["--config={C}/circle.py", "--config.seed=99999999999", "--workdir={NEW}"]),
    ("train.py", ["--config={C}/circle.py", "--config.data.subset_seed=-1", "--workdir={NEW}"]),
    ("train.py", ["--config={C}/circle.py", "--config.optim.b1=1.5", "--workdir={NEW}"]),
    ("train.py", ["--config={C}/circle.py", "--config.optim.b2=1.0", "--workdir={NEW}"]),
    ("train.py", ["--config={C}/circle.py", "--config.optim.eps=0", "--workdir={NEW}"]),
    ("train.py", ["--config={C}/circle.py", "--config.keep_checkpoints=0", "--workdir={NEW}"]),
    ("train.py", ["--config={C}/circle.py", "--config.keep_checkpoints=-1", "--workdir={NEW}"]),
    ("train.py", ["--config={C}/circle.py", "--config.batch_size=0", "--workdir={NEW}"]),
    ("train.py", ["--config={C}/circle.py", "--config.steps=-5", "--workdir={NEW}"]),
    ("train.py", ["--config={C}/circle.py", "--config.steps=1.5", "--workdir={NEW}"]),
    ("train.py", ["--config={C}/circle.py", "--config.ema.decay=1.5", "--workdir={NEW}"]),
    ("train.py", ["--config={C}/circle.py", "--config.ema.warmup=maybe", "--workdir={NEW}"]),
    ("train.py", ["--config={C}/circle.py", "--config.model.hidden=0", "--workdir={NEW}"]),
    ("train.py", ["--config={C}/circle.py", "--config.diffusion.sigma_max=0", "--workdir={NEW}"]),
    ("train.py", ["--config={C}/circle.py", "--config.diffusion.t_min=nan", "--workdir={NEW}"]),
    ("train.py", ["--config={C}/circle.py", "--config.sample.sampler=xyz", "--workdir={NEW}"]),
    ("train.py", ["--config={C}/circle.py", "--config.sample.eps=0", "--workdir={NEW}"]),
    ("train.py", ["--config={C}/circle.py", "--config.matmul_precision=fast", "--workdir={NEW}"]),
    ("train.py", ["--config={C}/circle.py", "--config.data.subset=random", "--workdir={NEW}"]),
    ("train.py", ["--config={C}/circle.py", "--config.monitor.level=2", "--workdir={NEW}"]),
    ("train.py", ["--config={C}/circle.py", "--config.log_every=7", "--workdir={NEW}"]),
    ("train.py", ["--config={C}/digits.py:k=8", "--config.model.dropout=1.0", "--workdir={NEW}"]),
    ("train.py",
     ["--config={C}/digits.py:k=8", "--config.optim.decay_factor=0", "--workdir={NEW}"]),
    # a rerun into the trained workdir with another experiment
    ("train.py",
     ["--config={C}/circle.py:k=9", *TINY, "--config.model.hidden=16", "--workdir={W}"]),
    # flags and paths
    ("train.py", ["--config={C}/circle.py"]),  # no --workdir
    ("train.py", ["--config={C}/circle.py", "--workdir="]),
    ("train.py", ["--config={C}/circle.py", "--workdir={FILE}"]),
    ("train.py", ["--config={C}/circle.py", "--workdir={NEW}", "--nope=1"]),
    ("train.py", ["--config={C}/circle.py", "--workdir={NEW}", "--progress=maybe"]),
    # seeds and sampling flags
    ("sample.py", ["--workdir={W}", "--seeds="]),
    ("sample.py", ["--workdir={W}", "--seeds=99999999999999999999"]),
    ("sample.py", ["--workdir={W}", "--seeds=0-99999999999"]),
    ("sample.py", ["--workdir={W}", "--seeds=0-4000000000"]),
    ("sample.py", ["--workdir={W}", "--seeds=5-1"]),
    ("sample.py", ["--workdir={W}", "--seeds=a-b"]),
    ("sample.py", ["--workdir={W}", "--seeds=-3"]),
    ("sample.py", ["--workdir={W}", "--seeds=1,,2"]),
    ("sample.py", ["--workdir={W}", "--seed=-1"]),
    ("sample.py", ["--workdir={W}", "--num=0"]),
    ("sample.py", ["--workdir={W}", "--sampler=xyz"]),
    ("sample.py", ["--workdir={W}", "--k=77"]),
    ("sample.py", ["--workdir={W}", "--step=999"]),
    ("sample.py", ["--workdir={NEW}"]),
    ("sample.py", ["--workdir={FILE}"]),
    ("sample.py", []),
    ("classify.py", ["--workdir={NEW}"]),
    ("classify.py", ["--workdir={W}", "--metric=ssim"]),
]


def _state(root):
    """{relative path: (size, mtime_ns)} of every file under root ({} if root does not exist)."""
    out = {}
    for r, _, files in os.walk(root):
        for f in files:
            st = os.stat(os.path.join(r, f))
            out[os.path.relpath(os.path.join(r, f), root)] = (st.st_size, st.st_mtime_ns)
    return out


def _run_script(script, args, env):
    return subprocess.run([sys.executable, os.path.join(REPO, "bin", script), *args],
                          capture_output=True, text=True, timeout=300, env=env)


def test_bad_input_table_gives_one_error_line_and_changes_nothing(tmp_path):
    import concurrent.futures

    assert len(BAD_INPUTS) >= 40
    env = dict(
        os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1"
    )
    trained = str(tmp_path / "trained")
    out = _run_script(
        "train.py",
        [f"--config={REPO}/configs/circle.py:k=9", *TINY, f"--workdir={trained}",
         "--progress=false"],
        env,
    )
    assert out.returncode == 0, out.stderr
    plain_file = tmp_path / "a_file.txt"
    plain_file.write_text("not a workdir")
    before = _state(trained)

    def run(i, row):
        script, args = row
        new = str(tmp_path / f"new{i}")
        args = [
            a.format(C=os.path.join(REPO, "configs"), W=trained, NEW=new, FILE=str(plain_file))
            for a in args
        ]
        return row, new, _run_script(script, args, env)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda ir: run(*ir), enumerate(BAD_INPUTS)))
    problems = []
    for (script, args), new, out in results:
        lines = out.stderr.strip().splitlines()
        if (
            out.returncode != 1
            or len(lines) != 1
            or not lines[0].startswith("error: ")
            or "Traceback" in out.stderr
        ):
            problems.append(
                f"{script} {' '.join(args)}: exit {out.returncode}, stderr {out.stderr[-600:]!r}"
            )
        if os.path.exists(new):
            problems.append(f"{script} {' '.join(args)}: created {new}")
    assert not problems, "\n".join(problems)
    assert _state(trained) == before, "a refused command changed the trained workdir"
    assert plain_file.read_text() == "not a workdir"


# ------------------------------------------------------------------------ checksums and a full disk
def test_garbled_checkpoint_bytes_fail_the_checksum_naming_the_step_and_the_fallback(tmp_path):
    """Bytes overwritten inside an OCDBT data file still decode (no format error), so only the
    sha256 recorded at save time catches them; a partial restore checks the arrays it read."""
    tree = {"params": {"w": np.linspace(-1, 1, 4096, dtype=np.float32)},
            "opt_state": {"mu": np.linspace(0, 1, 4096, dtype=np.float32)},
            "step": np.full((), 20, np.int32)}
    mngr = checkpoint.manager(str(tmp_path), "9")
    checkpoint.save(mngr, 10, tree)
    checkpoint.save(mngr, 20, tree, config={"seed": 1})
    checkpoint.wait(mngr)
    restored = checkpoint.restore(mngr, 20, tree)
    np.testing.assert_array_equal(restored["params"]["w"], tree["params"]["w"])
    assert checkpoint.recorded_config(checkpoint._dir(str(tmp_path), "9")) == {"seed": 1}
    step_dir = os.path.join(checkpoint._dir(str(tmp_path), "9"), "20")
    data = max((p for p in _files(step_dir) if "/d/" in p), key=os.path.getsize)
    raw = bytearray(open(data, "rb").read())
    raw[len(raw) // 2: len(raw) // 2 + 28] = b"\x7f" * 28
    open(data, "wb").write(bytes(raw))
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.restore(mngr, 20, tree)
    message = str(e.value)
    assert "\n" not in message and "step 20" in message and "fails its checksum" in message
    assert f"delete {step_dir} to fall back to the previous checkpoint, step 10" in message
    # The damaged array is named; reading only the intact one still works.
    damaged = [k for k in ("params", "opt_state") if k in message.split("first ")[1][:20]]
    intact = {"params": "opt_state", "opt_state": "params"}[damaged[0]]
    got, step = checkpoint.restore_item(
        checkpoint._dir(str(tmp_path), "9"), intact, tree[intact], 20
    )
    assert step == 20
    with pytest.raises(checkpoint.CheckpointError, match="fails its checksum"):
        checkpoint.restore_item(
            checkpoint._dir(str(tmp_path), "9"), damaged[0], tree[damaged[0]], 20
        )
    assert checkpoint.restore(mngr, 10, tree)["step"] == 20  # the fallback is intact


def test_restore_errors_are_one_line(saved_checkpoint):
    workdir, like, step_dir = saved_checkpoint
    wrong = {"w": np.zeros((5, 3), np.float32), "step": like["step"],
             "extra": np.zeros(2, np.float32)}
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.restore_latest(str(workdir), "9", wrong)
    assert "\n" not in str(e.value) and step_dir in str(e.value)
    assert "\n" not in cli_message(lambda: checkpoint.restore_latest(str(workdir), "9", wrong))


def cli_message(fn):
    with pytest.raises(SystemExit) as e:
        cli.run(lambda argv: fn(), ["prog", "--debug=false"])
    return e.value.code


def test_keep_checkpoints_below_one_is_refused():
    with pytest.raises(InputError, match="at least 1"):
        checkpoint.manager("/nonexistent", "9", 0)


def test_full_disk_stops_training_at_once_and_keeps_earlier_checkpoints(
    tmp_path, monkeypatch, one_device
):
    """A checkpoint that will not fit stops training before orbax writes anything (a write hook: the
    file system's free space seen by the save), naming the directory; the checkpoints before it
    stay."""
    c = tiny_config(steps=40)
    c.model.hidden, c.model.embed = 8, 8
    real = checkpoint.shutil.disk_usage
    saves = []
    original_save = checkpoint.save

    def counting_save(mngr, step, tree, **kw):
        saves.append(step)
        return original_save(mngr, step, tree, **kw)

    def full_after_two(path):
        usage = real(path)
        return usage._replace(free=0) if len(saves) > 2 else usage

    monkeypatch.setattr(checkpoint, "save", counting_save)
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", full_after_two)
    with pytest.raises(WriteError) as e:
        train.train(c, str(tmp_path), progress=False)
    assert "\n" not in str(e.value) and "Not enough space for checkpoint step 30" in str(e.value)
    assert checkpoint._dir(str(tmp_path), "9") in str(e.value)
    assert sorted(checkpoint.manager(str(tmp_path), "9", None).all_steps()) == [10, 20]


def test_a_failed_asynchronous_save_stops_training_at_the_next_chunk(
    tmp_path, monkeypatch, one_device
):
    """tensorstore reports a full disk as ValueError('RESOURCE_EXHAUSTED: ...') from orbax's
    background thread; training stops at the next chunk with one WriteError line instead of carrying
    on."""
    import orbax.checkpoint as ocp
    c = tiny_config(steps=40)
    c.model.hidden, c.model.embed = 8, 8
    calls = []

    def failed(self):
        calls.append(1)
        if len(calls) > 1:
            raise ValueError('RESOURCE_EXHAUSTED: Error writing "params.w/0" in OCDBT database:\n'
                             'Failed writing: No space left on device [os_error_code=28]')

    monkeypatch.setattr(ocp.CheckpointManager, "check_for_errors", failed)
    with pytest.raises(
        WriteError, match=r"^Cannot write a checkpoint under .*checkpoints/9 \(RESOURCE_EXHAUSTED\)"
    ):
        train.train(c, str(tmp_path), progress=False)
    assert len(calls) == 2  # stopped at the second chunk, not at the end


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0 or not os.path.exists("/proc/mounts"),
    reason="mounting a small tmpfs needs root",
)
def test_full_disk_on_a_real_small_file_system(tmp_path):
    """The same on a real 2.5 MiB tmpfs, through bin/train.py: one error line, the earlier
    checkpoints kept."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2500k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("tmpfs mount refused here")
    try:
        out = subprocess.run(
            [sys.executable, os.path.join(REPO, "bin", "train.py"),
             f"--config={REPO}/configs/circle.py:k=9,steps=4000", "--config.ckpt_every=1000",
             f"--workdir={mount}/run", "--progress=false"],
            capture_output=True,
            text=True,
            timeout=600,
            env=dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1"),
        )
        lines = out.stderr.strip().splitlines()
        assert (
            out.returncode == 1
            and len(lines) == 1
            and lines[0].startswith("error: Not enough space")
        ), out.stderr
        assert sorted(os.listdir(mount / "run" / "checkpoints" / "9")) == ["1000"]
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def test_config_json_edited_after_training_is_refused_when_sampling(tmp_path, one_device):
    c = tiny_config(steps=10)
    c.model.hidden, c.model.embed = 8, 8
    train.train(c, str(tmp_path), progress=False)
    from diffmem.workdir import Workdir
    Workdir(str(tmp_path)).model("9")  # unchanged: fine
    path = tmp_path / "config.json"
    obj = json.loads(path.read_text())
    obj["data"]["k"] = 10
    path.write_text(json.dumps(obj))
    with pytest.raises(configlib.ConfigError,
                       match=r"config.json was changed after training: it differs in \['data'\]"):
        Workdir(str(tmp_path)).model("10")
    obj["data"]["k"], obj["sample"]["num"] = 9, 7  # a rerun key: still the same experiment
    path.write_text(json.dumps(obj))
    Workdir(str(tmp_path)).model("9")
