#!/usr/bin/env python
"""`python bin/machines.py` is the `diffmem-machines` command
(`diffmem.commands.machines`; --help for its flags)."""
from diffmem.commands.machines import run

if __name__ == "__main__":
    run()
