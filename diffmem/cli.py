"""What every bin/ script shares: config flags with clear errors, quiet logging, and error exits."""
from __future__ import annotations

import os
import sys
from typing import Callable, Sequence

CONFIG = None  # the ConfigDict parsed from --config / --config.KEY=VALUE, set by run()


def run(main: Callable[[list[str]], None], argv: Sequence[str], needs_config: bool = False) -> None:
    """Parse --config* (diffmem.configlib), then hand the rest to absl's app.run(main)."""
    global CONFIG
    from absl import app, logging

    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO

    from diffmem import configlib

    try:
        CONFIG, rest = configlib.parse_config_argv(list(argv))
    except configlib.ConfigError as e:
        sys.exit(f"error: {e}")
    if needs_config and CONFIG is None:
        sys.exit("error: --config=path/to/config.py[:arg] is required (e.g. --config=configs/circle.py:k=9).")

    def guarded(args):
        from diffmem import checkpoint, train
        try:
            main(args)
        except (configlib.ConfigError, checkpoint.CheckpointError, train.TrainingDiverged, ValueError,
                FileNotFoundError, FileExistsError) as e:
            sys.exit(f"error: {e}")

    app.run(guarded, argv=rest)
