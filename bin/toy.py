#!/usr/bin/env python
"""`python bin/toy.py` is the `diffmem-toy` command
(`diffmem.commands.toy`; --help for its flags)."""
from diffmem.commands.toy import run

if __name__ == "__main__":
    run()
