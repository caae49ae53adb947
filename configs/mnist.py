"""From a checkout, `--config=configs/mnist.py:...` loads `diffmem.configs.mnist`, as
`--config=mnist:...` does anywhere."""
from diffmem.configs.mnist import *  # noqa: F401,F403
from diffmem.configs.mnist import __doc__, get_config  # noqa: F401
