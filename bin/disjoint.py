#!/usr/bin/env python
"""`python bin/disjoint.py` is the `diffmem-disjoint` command
(`diffmem.commands.disjoint`; --help for its flags)."""
from diffmem.commands.disjoint import run

if __name__ == "__main__":
    run()
