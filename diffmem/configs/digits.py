"""Image diffusion on the 8x8 handwritten digits shipped with scikit-learn: the CPU-sized image
study.

    python bin/train.py --config=configs/digits.py:k=64 --workdir=runs/digits
    python bin/sample.py --workdir=runs/digits --seeds=0-255

    python bin/train.py --config=configs/digits.py:k=64,arch=ddpmpp,precond=edm
        --workdir=runs/digits-edm
    # EDM's Heun sampler, 18 steps
    python bin/sample.py --workdir=runs/digits-edm --seeds=0-255

1,797 real 8x8 images scaled to [-1, 1]; the K-subset is the first K of a seeded permutation. A
small DDPM UNet (ch 32, multipliers 1,2, attention at 4 px) or DDPM++ (32 channels, 1,2, one block
per level) learns them in a few thousand steps (minutes on a laptop CPU); small K memorizes (samples
copy training digits), larger K produces new digits. Samplers: DDPM ancestral (1000 steps) for
precond=ddpm; EDM's Heun (18 steps) otherwise, and EDM's Euler for the empirical optimal denoiser
(Zhang et al.; `sample.optimal_sampler`). Arg keys: k (int or a+b sweep), steps (steps, "100ep"
epochs or "500kimg" images), seed, lr, batch, arch (ddpm_unet | ddpmpp), precond (ddpm | vp | ve |
edm; ddpm trains with Ho et al.'s epsilon loss, the others with EDM's loss).
"""
from diffmem import image_configs as ic

__all__ = ["get_config"]


def get_config(arg=None):
    a = ic.parse_args("digits", arg, k=64, steps="4000", seed=0, lr=1e-3, batch=64,
                      arch="ddpm_unet", precond="ddpm")
    model = ic.model_section(a.arch, channels=32, channel_mult=(1, 2), num_blocks=1,
                             attn_resolutions=(4,), dropout=0.1, num_groups=8)
    return ic.assemble(seed=a.seed, data=ic.data_section("digits", a.k), model=model,
                       diffusion=ic.diffusion_section(a.precond), loss=ic.loss_section(a.precond),
                       optim=ic.optim_section(a.lr, grad_clip=1.0, warmup_steps=200),
                       ema=dict(decay=0.999, warmup=True), batch_size=a.batch,
                       steps=ic.steps_of(a.steps, a.k, a.batch, 4000), steps_per_call=100,
                       log_every=100, ckpt_every=1000,
                       sample=ic.sample_section(a.precond, num=256, batch=256))
