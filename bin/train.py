#!/usr/bin/env python
"""`python bin/train.py` is the `diffmem-train` command
(`diffmem.commands.train`; --help for its flags)."""
from diffmem.commands.train import run

if __name__ == "__main__":
    run()
