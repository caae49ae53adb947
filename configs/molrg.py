"""From a checkout, `--config=configs/molrg.py:...` loads `diffmem.configs.molrg`, as
`--config=molrg:...` does anywhere."""
from diffmem.configs.molrg import *  # noqa: F401,F403
from diffmem.configs.molrg import __doc__, get_config  # noqa: F401
