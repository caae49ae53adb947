"""From a checkout, `--config=configs/kadkhodaie.py:...` loads `diffmem.configs.kadkhodaie`, as
`--config=kadkhodaie:...` does anywhere."""
from diffmem.configs.kadkhodaie import *  # noqa: F401,F403
from diffmem.configs.kadkhodaie import __doc__, get_config  # noqa: F401
