"""CIFAR-10 32x32: Pham et al.'s DDPM setting by default, Gu et al.'s DDPM++ VP setting with
arch=ddpmpp.

    python bin/train.py --config=configs/cifar10.py:k=1000 --workdir=runs/cifar-ddpm
    python bin/train.py --config=configs/cifar10.py:k=1000,arch=ddpmpp,precond=vp
        --workdir=runs/cifar-gu
    python bin/sample.py --workdir=runs/cifar-gu --seeds=0-9999
    python bin/study.py --config=configs/cifar10.py:k=500+1000+2000+4000,arch=ddpmpp,precond=vp
        --workdir=runs/cifar-study
      # the one-command K-sweep study (diffmem.studies.k_sweep) on accelerators

Data: TFDS `cifar10` prepared as array_record, or the binary tarball with
--config.data.source=cifar10-binary:/path/cifar-10-binary.tar.gz (nothing is downloaded).
  default (Pham et al., configs/cifar10.yaml): DDPM UNet ch 128, multipliers 1,2,2,2, 2 blocks,
  attention
    at 16 px, dropout 0.1, NIN layers initialised at scale 0.1 (35.7M parameters), epsilon loss
    (pixel mean) on 1000 linear betas, Adam 2e-4 clipped at norm 1, batch 128, EMA 0.9999, 500k
    iterations; a random K-subset. Sampler: DDPM ancestral, 1000 steps (as Pham et al.).
  arch=ddpmpp,precond=vp (Gu et al.): DDPM++ 128 channels, multipliers 2,2,2, 2 blocks, attention at
  16 px,
    dropout 0.13 (35.1M parameters), VP preconditioning and EDM's loss summed over pixels, Adam
    2e-4, batch 512, class-balanced K-subset; per K at train time (their |D| scaling,
    diffmem.schedules): 40,000 K training images (K = 1000: 78,125 steps; K = 4000: 312,500), a K/5
    kimg lr ramp-up and EMA 0.99929. Sampler: EDM's Heun, 18 steps (as Gu et al.); the empirical
    optimal denoiser: EDM's Euler, 18 steps (`sample.optimal_sampler`, as Zhang et al.). Expect
    memorization ratios near 99% / 92% / 61% / 17% at
    K = 500 / 1k / 2k / 4k.
Both are GPU jobs. Skip-connection study: --config.model.keep_skips_at=32 (or
model.skip_connections). Arg keys: k, steps, seed, lr, batch (0 = the recipe's), arch (ddpm_unet |
ddpmpp), precond (ddpm | vp | ve | edm).
"""
from diffmem import image_configs as ic

__all__ = ["get_config"]

CIFAR10 = ic.ImageSet(source="tfds:cifar10", ddpm_mult=(1, 2, 2, 2), pham_steps=500_000)


def get_config(arg=None):
    return ic.recipe_config(ic.parse_args("cifar10", arg, **ic.COMMON_ARGS), CIFAR10)
