"""diffmem's commands: one module per `bin/` script and `diffmem-<name>` console command (e.g.
`diffmem.commands.train` is `bin/train.py` and `diffmem-train`). Each only parses flags and calls
one library function; `run()` is its entry point."""

__all__: list[str] = []
