"""Seed ranges as users write them (`--seeds=0-49999`), read without JAX so a bad one is refused at
once.

    parse_seeds("0-1499")        # 1,500 seeds 0 .. 1499
    parse_seeds("0-9,100-109")   # two ranges
    parse_seeds("0,5,7")         # single seeds

Every seed lies in [0, 2**32) (a sample's key is `jax.random.key(uint32(seed))`,
`diffmem.sampling`), and one job takes at most `MAX_SEEDS_PER_JOB` seeds: the ranges are counted
before any list is built.
"""
from __future__ import annotations

import numpy as np

from diffmem.errors import InputError

__all__ = ["MAX_SEED", "MAX_SEEDS_PER_JOB", "parse_seeds"]

MAX_SEED = 2**32 - 1
"""The largest seed (seeds are read as uint32)."""
MAX_SEEDS_PER_JOB = 10**8
"""The most seeds one sampling job takes (8 bytes a seed before a single sample is drawn); split
larger jobs."""


def parse_seeds(text: str) -> np.ndarray:
    """'0-49999' (inclusive range), '0,5,7' or a mix like '0-9,100-109' -> (N,) int64 array, in the
    order given.

    Raises `InputError` naming the bad part: not a seed or LOW-HIGH range, outside [0, MAX_SEED], an
    empty range, no seeds at all, or more than `MAX_SEEDS_PER_JOB` seeds.
    """
    parts = [p.strip() for p in str(text).split(",")]
    if not any(parts):
        raise InputError(
            f"No seeds in {text!r}: give a range such as --seeds=0-1499 (or leave --seeds out)."
        )
    ranges = []
    for part in parts:
        if not part:
            raise InputError(f"Seeds {text!r} has an empty item: write e.g. 0-9,100-109.")
        lo_text, dash, hi_text = part.partition("-")
        try:
            lo, hi = int(lo_text), int(hi_text if dash else lo_text)
        except ValueError:
            raise InputError(
                f"Seeds {text!r}: {part!r} is not a seed or a LOW-HIGH range (e.g. 0-1499)."
            ) from None
        for v in (lo, hi):
            if not 0 <= v <= MAX_SEED:
                raise InputError(
                    f"Seed {v} in {text!r} is out of range: seeds lie in [0, {MAX_SEED}]."
                )
        if hi < lo:
            raise InputError(f"Seed range {part!r} is empty: write LOW-HIGH with LOW <= HIGH.")
        ranges.append((lo, hi))
    total = sum(hi - lo + 1 for lo, hi in ranges)
    if total > MAX_SEEDS_PER_JOB:
        raise InputError(
            f"Seeds {text!r} are {total:,} seeds; one job takes at most {MAX_SEEDS_PER_JOB:,}: "
            f"split "
            "the range over several jobs (each adds its own shard)."
        )
    return np.concatenate([np.arange(lo, hi + 1, dtype=np.int64) for lo, hi in ranges])
