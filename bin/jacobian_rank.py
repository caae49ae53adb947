#!/usr/bin/env python
"""`python bin/jacobian_rank.py` is the `diffmem-jacobian-rank` command
(`diffmem.commands.jacobian_rank`; --help for its flags)."""
from diffmem.commands.jacobian_rank import run

if __name__ == "__main__":
    run()
