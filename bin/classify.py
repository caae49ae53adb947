#!/usr/bin/env python
"""`python bin/classify.py` is the `diffmem-classify` command
(`diffmem.commands.classify`; --help for its flags)."""
from diffmem.commands.classify import run

if __name__ == "__main__":
    run()
