"""From a checkout, `--config=configs/gmm.py:...` loads `diffmem.configs.gmm`, as
`--config=gmm:...` does anywhere."""
from diffmem.configs.gmm import *  # noqa: F401,F403
from diffmem.configs.gmm import __doc__, get_config  # noqa: F401
