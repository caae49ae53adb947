"""Bad input and faults fail fast with a clear message and lose nothing: damaged checkpoints, config.json and
metrics.jsonl, failed writes, two trainings into one workdir, and the CLI's error exits. All cheap: no
training step is compiled here (the kill-and-resume test is in test_train.py)."""
import errno
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from diffmem import atomic, checkpoint, cli, configlib, lock, report, train
from diffmem.errors import (DiffmemError, InputError, MissingInputError, WorkdirBusyError, WriteError)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(steps=20):
    c = configlib.load_config_file(os.path.join(REPO, "configs/circle.py") + f":k=9,steps={steps}")
    c.steps_per_call, c.log_every, c.ckpt_every = 10, 10, 10
    return c


# ------------------------------------------------------------------------------------------ checkpoints
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
    with pytest.raises(checkpoint.CheckpointError, match=r"cannot be read.*Delete that step directory") as e:
        checkpoint.restore_latest(str(workdir), "9", like)
    assert step_dir in str(e.value)


# ---------------------------------------------------------------------------------- config and metrics
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
        f.write('{"step": 10, "loss/9": 1.0}\n{"step": 20, "loss/9": 0.5}\n{"step": 30, "lo')  # killed mid-line
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


# -------------------------------------------------------------------------------------- atomic writes
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


# ---------------------------------------------------------------------------------------------- lock
def test_second_training_into_a_busy_workdir_is_refused(tmp_path):
    workdir = str(tmp_path / "run")
    with lock.workdir_lock(workdir, "training"):  # as a first training would hold it
        with pytest.raises(WorkdirBusyError, match=rf"pid {os.getpid()}.*use another --workdir"):
            train.train(tiny_config(), workdir, progress=False)
        # Another process is refused too (flock is per open file, so this is what a second run sees).
        code = (f"from diffmem import lock\ntry:\n    with lock.workdir_lock({workdir!r}): print('GOT')\n"
                "except Exception as e: print(type(e).__name__)")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert out.stdout.strip() == "WorkdirBusyError", out.stderr
    assert not os.path.exists(os.path.join(workdir, "config.json"))  # the refused run wrote nothing
    with lock.workdir_lock(workdir):  # released on exit
        pass


def test_lock_left_by_a_killed_process_does_not_block(tmp_path):
    workdir = str(tmp_path)
    # A holder killed with SIGKILL: its lock file stays, with its pid, but the kernel dropped its flock.
    code = f"import os\nfrom diffmem import lock\nwith lock.workdir_lock({workdir!r}):\n    os.kill(os.getpid(), 9)"
    proc = subprocess.run([sys.executable, "-c", code], timeout=60)
    assert proc.returncode == -9
    info = json.loads(open(os.path.join(workdir, lock.LOCK_NAME)).read())
    assert info["pid"] != os.getpid()
    with lock.workdir_lock(workdir):
        assert json.loads(open(os.path.join(workdir, lock.LOCK_NAME)).read())["pid"] == os.getpid()


# ----------------------------------------------------------------------------------------------- CLI
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
    assert issubclass(configlib.ConfigError, DiffmemError) and issubclass(train.TrainingDiverged, DiffmemError)
    assert issubclass(checkpoint.CheckpointError, DiffmemError)
    assert "--num_processes" in _cli(lambda argv: None, "--debug=false", "--coordinator=127.0.0.1:1")


def test_distributed_start_after_jax_started_is_a_clear_error():
    import jax

    from diffmem import multihost
    jax.devices()  # JAX has computed: too late to join a cluster
    with pytest.raises(DiffmemError, match="before any JAX computation"):
        multihost.initialize("127.0.0.1:1", 2, 0, timeout_s=5)
    assert not jax.distributed.is_initialized()


def test_checkpoint_write_failure_is_a_write_error(tmp_path, monkeypatch, one_device):
    """orbax raises a bare OSError when checkpoints/ cannot be written (measured: NotADirectoryError on the
    step's temporary directory); training reports it naming the directory and what to do."""
    def full_disk(mngr, step, tree):
        raise OSError(errno.ENOSPC, "No space left on device", f"{mngr.directory}/{step}.orbax-checkpoint-tmp")

    monkeypatch.setattr(checkpoint, "save", full_disk)
    c = tiny_config(steps=10)
    c.model.hidden, c.model.embed = 8, 8
    with pytest.raises(WriteError, match=r"Cannot write a checkpoint under .*checkpoints.*No space left"):
        train.train(c, str(tmp_path), progress=False)
