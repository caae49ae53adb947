#!/usr/bin/env python
"""`python bin/reproducibility.py` is the `diffmem-reproducibility` command
(`diffmem.commands.reproducibility`; --help for its flags)."""
from diffmem.commands.reproducibility import run

if __name__ == "__main__":
    run()
