"""What every bin/ script shares: config flags with clear errors, quiet logging, multi-host start-up
and error exits.

Flags every script accepts (defined here):
  --distributed          join a jax.distributed cluster first (SLURM / Open MPI / TPU pods are
                         detected)
  --coordinator=H:P --num_processes=N --process_id=I   the same, by hand (implies --distributed)
  --debug                show the traceback of diffmem's own errors instead of a one-line message
"""
from __future__ import annotations

import os
import sys
from typing import Callable, Sequence

from absl import flags

__all__ = ["FLAGS", "CONFIG", "run", "fail", "check_workdir_path", "start_distributed"]

flags.DEFINE_bool(
    "distributed",
    False,
    "Initialise jax.distributed before any work (one process per host or "
    "accelerator; SLURM, Open MPI and TPU pods are detected automatically).",
)
flags.DEFINE_string(
    "coordinator",
    None,
    "jax.distributed coordinator HOST:PORT (process 0's host), with "
    "--num_processes and --process_id; implies --distributed.",
)
flags.DEFINE_integer("num_processes", None, "Number of processes of a --coordinator cluster.")
flags.DEFINE_integer(
    "process_id", None, "This process's id in 0..num_processes-1 (--coordinator cluster)."
)
flags.DEFINE_bool(
    "debug", False, "Re-raise diffmem's errors with their traceback instead of a one-line message."
)
FLAGS = flags.FLAGS

CONFIG = None  # the ConfigDict parsed from --config / --config.KEY=VALUE, set by run()


def run(main: Callable[[list[str]], None], argv: Sequence[str], needs_config: bool = False,
        module: str | None = None) -> None:
    """Parse --config* (diffmem.configlib) and the flags, then run `main` under absl's app.run.

    Every user error ends the script with one line, `error: <message>`, and exit status 1, before
    any JAX work when it is in the command line: a bad config key or value, a bad or missing flag
    (absl's own errors), a
    --workdir that is empty or a file. Before `main`, joins jax.distributed when asked
    (`start_distributed`).
    diffmem's own errors raised later (`diffmem.errors.DiffmemError`: unreadable checkpoint,
    diverged training, busy workdir, failed write...) end the same way (with --debug: the
    traceback); any other exception is a bug and keeps its traceback.
    """
    global CONFIG
    from absl import app, logging

    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO

    from diffmem import configlib
    from diffmem.errors import DiffmemError

    debug = any(a in ("--debug", "--debug=true", "--debug=True", "--debug=1") for a in argv)
    try:
        CONFIG, rest = configlib.parse_config_argv(list(argv))
    except configlib.ConfigError as e:
        if debug:
            raise
        fail(e)
    helping = any(a in HELP_FLAGS for a in argv)
    if needs_config and CONFIG is None and not helping:
        fail("--config is required: a shipped config's name (e.g. --config=circle:k=9), a path "
             "(--config=configs/circle.py:k=9) or a run's config.json.")
    main_module = sys.modules.get("__main__")
    if module is not None:   # a diffmem.commands module run as bin/ script or console command
        for flag in FLAGS.flags_by_module_dict().get(module, []):   # --help lists its flags
            FLAGS.register_key_flag_for_module(argv[0], flag)
    if main_module is not None and helping:
        doc = sys.modules[module].__doc__ if module else main_module.__doc__
        main_module.__doc__ = command_help(doc or "", argv, needs_config)

    def parse_flags(args):
        try:
            try:
                rest = FLAGS(args)
            except SystemExit:   # absl's --help exits 1 after printing; asking for help succeeds
                if helping:
                    sys.exit(0)
                raise
            if "workdir" in FLAGS and FLAGS["workdir"].present:
                check_workdir_path(FLAGS.workdir)
            return rest
        except (flags.Error, DiffmemError) as e:
            if debug:
                raise
            fail(e)

    def guarded(args):
        try:
            start_distributed()
            main(args)
        except DiffmemError as e:
            if FLAGS.debug:
                raise
            fail(e)

    app.run(guarded, argv=rest, flags_parser=parse_flags)


HELP_FLAGS = ("--help", "-h", "-?", "--helpshort", "--helpfull")


def command_help(doc: str, argv: Sequence[str], needs_config: bool) -> str:
    """--help's text: the command's docstring, then the configs: the given config's own docstring
    (its arg keys), or the shipped configs' names."""
    from diffmem import configlib
    spec = None
    for i, a in enumerate(argv):
        if a.startswith("--config="):
            spec = a.split("=", 1)[1]
        elif a == "--config" and i + 1 < len(argv):
            spec = argv[i + 1]
    text = doc.rstrip()
    if not needs_config and spec is None:
        return text
    if spec is None:
        names = ", ".join(configlib.config_names())
        return (f"{text}\n\n--config: a shipped config by name ({names}; e.g. "
                "--config=circle:k=9), a path (configs/circle.py:k=9) or a run's config.json; "
                "--config=NAME --help shows that config's arg keys.")
    return f"{text}\n\n--config={spec}:\n{configlib.config_doc(spec)}"


def fail(message) -> None:
    """Exit with status 1 and one line on stderr, `error: <message>` (a message over several lines
    is folded)."""
    sys.exit("error: " + " ".join(str(message).split()))


def check_workdir_path(path: str | None) -> None:
    """Refuse a --workdir that cannot be one: empty, or an existing file (a new or existing
    directory is fine)."""
    from diffmem.errors import InputError
    if path is None:
        return
    if not path.strip():
        raise InputError("--workdir is empty: give the run's directory, e.g. --workdir=runs/c9.")
    if os.path.exists(path) and not os.path.isdir(path):
        raise InputError(
            f"--workdir={path} is a file, not a directory: give the run's directory (a new one, or "
            "one written by bin/train.py)."
        )


def start_distributed() -> bool:
    """Join jax.distributed if --distributed or --coordinator was given (before JAX computes
    anything); returns whether it did. Every bin/ script calls it through `run`."""
    if not (FLAGS.distributed or FLAGS.coordinator):
        return False
    if FLAGS.coordinator and (FLAGS.num_processes is None or FLAGS.process_id is None):
        from diffmem.errors import InputError

        raise InputError(
            "--coordinator needs --num_processes=N and --process_id=I (0..N-1) on every process."
        )
    from diffmem import multihost
    multihost.initialize(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id)
    return True
