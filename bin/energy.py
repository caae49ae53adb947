#!/usr/bin/env python
"""`python bin/energy.py` is the `diffmem-energy` command
(`diffmem.commands.energy`; --help for its flags)."""
from diffmem.commands.energy import run

if __name__ == "__main__":
    run()
