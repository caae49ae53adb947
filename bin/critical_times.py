#!/usr/bin/env python
"""`python bin/critical_times.py` is the `diffmem-critical-times` command
(`diffmem.commands.critical_times`; --help for its flags)."""
from diffmem.commands.critical_times import run

if __name__ == "__main__":
    run()
