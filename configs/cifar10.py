"""From a checkout, `--config=configs/cifar10.py:...` loads `diffmem.configs.cifar10`, as
`--config=cifar10:...` does anywhere."""
from diffmem.configs.cifar10 import *  # noqa: F401,F403
from diffmem.configs.cifar10 import __doc__, get_config  # noqa: F401
