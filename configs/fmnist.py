"""From a checkout, `--config=configs/fmnist.py:...` loads `diffmem.configs.fmnist`, as
`--config=fmnist:...` does anywhere."""
from diffmem.configs.fmnist import *  # noqa: F401,F403
from diffmem.configs.fmnist import __doc__, get_config  # noqa: F401
