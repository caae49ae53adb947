#!/usr/bin/env python
"""`python bin/sample.py` is the `diffmem-sample` command
(`diffmem.commands.sample`; --help for its flags)."""
from diffmem.commands.sample import run

if __name__ == "__main__":
    run()
