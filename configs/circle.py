"""From a checkout, `--config=configs/circle.py:...` loads `diffmem.configs.circle`, as
`--config=circle:...` does anywhere."""
from diffmem.configs.circle import *  # noqa: F401,F403
from diffmem.configs.circle import __doc__, get_config  # noqa: F401
