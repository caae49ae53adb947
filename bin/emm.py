#!/usr/bin/env python
"""`python bin/emm.py` is the `diffmem-emm` command
(`diffmem.commands.emm`; --help for its flags)."""
from diffmem.commands.emm import run

if __name__ == "__main__":
    run()
