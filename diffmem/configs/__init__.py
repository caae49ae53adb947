"""The shipped configs, found by name: `--config=cifar10:k=1000` (or, from a checkout,
`--config=configs/cifar10.py:k=1000`). Each is a `get_config(arg)` module whose docstring gives its
commands and arg keys; `configlib.config_names()` lists them."""

__all__: list[str] = []
