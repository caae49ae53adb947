"""From a checkout, `--config=configs/celeba.py:...` loads `diffmem.configs.celeba`, as
`--config=celeba:...` does anywhere."""
from diffmem.configs.celeba import *  # noqa: F401,F403
from diffmem.configs.celeba import __doc__, get_config  # noqa: F401
