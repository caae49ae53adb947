#!/usr/bin/env python
"""`python bin/import_model.py` is the `diffmem-import-model` command
(`diffmem.commands.import_model`; --help for its flags)."""
from diffmem.commands.import_model import run

if __name__ == "__main__":
    run()
