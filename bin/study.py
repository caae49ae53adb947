#!/usr/bin/env python
"""`python bin/study.py` is the `diffmem-study` command
(`diffmem.commands.study`; --help for its flags)."""
from diffmem.commands.study import run

if __name__ == "__main__":
    run()
