"""Pham et al.'s Fashion-MNIST study: a DDPM UNet on K-image subsets of the 60,000 28x28 training images.

    python bin/train.py --config=configs/fmnist.py:k=1000 --workdir=runs/fmnist
    python bin/train.py --config=configs/fmnist.py:k=2+100+1000+10000 --workdir=runs/fmnist   # a K sweep
    python bin/sample.py --workdir=runs/fmnist --seeds=0-9999

Data: the real Fashion-MNIST IDX files of Debian's `dataset-fashion-mnist` package (offline; another
location: --config.data.source=fmnist:/dir/with/idx/files). Pham et al.'s setting (their configs/fmnist.yaml):
DDPM UNet ch 128, multipliers 1,2,2, 2 blocks, attention list (16,) (no 28/14/7 px level has it; the
middle block always does), dropout 0.1, NIN layers initialised at scale 0.1, epsilon loss on 1000 linear
betas, Adam 2e-4 clipped at norm 1, batch 128, EMA 0.9999, 400k iterations: a GPU job (hours). Sampler:
DDPM ancestral, 1000 steps, as Pham et al.; LPIPS enlarges the 28 px images to 32 px by nearest-exact, as
their code. Small K memorizes, K in the thousands
produces spurious then generalized samples (memorized / spurious / generalized by LPIPS distances).
Arg keys: k, steps, seed, lr, batch (0 = the recipe's), arch (ddpm | ddpmpp: Gu et al.'s DDPM++ recipe),
precond (ddpm | vp | ve | edm); see diffmem.image_configs.
"""
from diffmem import image_configs as ic

FMNIST = ic.ImageSet(source="fmnist", ddpm_mult=(1, 2, 2), pham_steps=400_000)


def get_config(arg=None):
    return ic.recipe_config(ic.parse_args("fmnist", arg, **ic.COMMON_ARGS), FMNIST)
