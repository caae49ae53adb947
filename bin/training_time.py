#!/usr/bin/env python
"""`python bin/training_time.py` is the `diffmem-training-time` command
(`diffmem.commands.training_time`; --help for its flags)."""
from diffmem.commands.training_time import run

if __name__ == "__main__":
    run()
