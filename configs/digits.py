"""From a checkout, `--config=configs/digits.py:...` loads `diffmem.configs.digits`, as
`--config=digits:...` does anywhere."""
from diffmem.configs.digits import *  # noqa: F401,F403
from diffmem.configs.digits import __doc__, get_config  # noqa: F401
