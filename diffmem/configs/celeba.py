"""CelebA as Kadkhodaie et al. use it (centre-cropped, 80x80, grayscale), with the DDPM recipe.

    python bin/train.py --config=configs/celeba.py:k=1000 --workdir=runs/celeba
    python bin/train.py --config=configs/celeba.py:k=10+100+1000+10000+100000 --workdir=runs/celeba
    python bin/sample.py --workdir=runs/celeba --seeds=0-1023

Data: TFDS `celeb_a` prepared as array_record (178x178 centre crop, resized to 80x80, luminance); no
labels, so K-subsets are random. Network and training follow Pham et al.'s DDPM recipe: DDPM UNet ch
128, multipliers 1,2,2,2 (80/40/20/10 px), 2 blocks, attention at 20 px (the level nearest CIFAR's
16 px), dropout 0.1, Adam 2e-4 clipped at norm 1, batch 128, EMA 0.9999, 500k iterations (a GPU
job); sampler: DDPM ancestral, 1000 steps. (Kadkhodaie et al. themselves train a bias-free UNet as a
blind denoiser and sample with their stochastic ascent: configs/kadkhodaie.py.) Kadkhodaie et al.
report memorization for N <= 100 and nearly identical samples from models trained on disjoint sets
for N >= 10^4. Arg keys: k, steps, seed, lr, batch (0 = the recipe's), arch (ddpm_unet | ddpmpp),
precond (ddpm | vp | ve | edm).
"""
from diffmem import image_configs as ic

__all__ = ["get_config"]

CELEBA = ic.ImageSet(source="tfds:celeb_a", image_size=80, center_crop=True, grayscale=True,
                     labelled=False, ddpm_mult=(1, 2, 2, 2), ddpmpp_mult=(2, 2, 2),
                     attn_resolutions=(20,), pham_steps=500_000)


def get_config(arg=None):
    return ic.recipe_config(ic.parse_args("celeba", arg, **ic.COMMON_ARGS), CELEBA)
