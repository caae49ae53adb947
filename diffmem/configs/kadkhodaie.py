"""Kadkhodaie et al. (ICLR 2024): bias-free blind denoisers trained on two disjoint sets S1 / S2 of
size N.

    python bin/disjoint.py --config=configs/kadkhodaie.py:data=digits,n=1+10+100+898
        --workdir=runs/kad-digits
    python bin/disjoint.py --config=configs/kadkhodaie.py:data=calpha,alpha=2,size=32,n=1+10+100
        --workdir=runs/kad-ca
    python bin/train.py --config=configs/kadkhodaie.py:data=fmnist,n=1000,set=last
        --workdir=runs/kad-s2

bin/disjoint.py trains the S1 (set=first) and S2 (set=last) model of every N and compares their
samples; bin/train.py trains one set. Upstream recipe (section C of
shared/notes/upstream_definitions.md): their UNet (64 kernels, 3 blocks), blind noise sqrt(255
sigma) ~ U[0, sqrt(255)], loss sum |f(y) - sigma z|^2 / batch, Adam 1e-3 halved every 100 of 1000
epochs of 250,000 images (small sets tiled: here each image is repeated in the step so a step sees
`batch` noisy images), batch 512, no EMA (decay 0: EMA params = params).

Units: diffmem's datasets are in [-1, 1]; the bias-free net cannot add a constant, so it sees
x01 = (x + 1) / 2 in [0, 1] (Kadkhodaie's range, noise sigma in the same units), and the denoiser
    other code
uses is D(x) = 2 D_[0,1]((x + 1) / 2) - 1 (homogeneous in [0, 1] units only). The `diffusion`
section is there only for the noise range models report: sigma in [-1, 1] units, 2 x [0.01, 1].

Arg keys: data (digits | fmnist | calpha | discs | celeba80 | lsun80), dir (the img_align_celeba or
LSUN folder), alpha (C-alpha), pool (synthetic pool size), size (synthetic image size), n (N, a+b+c
sweep), set (first = S1 | last = S2), order_seed (seed of the one fixed order S1 and S2 are cut
from; -1 = the data's own order, e.g. sorted file names), arch (bf_unet | bf_cnn), blocks (0 = 3, or
fewer when the size needs it), kernels, layers (BF-CNN), epochs, epoch_images, batch, lr,
halve_every (epochs), steps (0 = epochs x
ceil(epoch_images / batch); else optimizer steps), seed, samples (per N), max_iters (sampler cap).

BF-CNN (arch=bf_cnn) follows upstream training (`code/main.py`): 21 layers (702,784 parameters at
one channel), ReLU after the first conv (first_layer_linear False). Upstream's model loader
(`init_BF_CNN`) builds another variant, 20 layers (665,856 parameters) with a linear first layer; to
match it, add the overrides --config.model.num_layers=20 --config.model.first_layer_linear=True (or
the arg layers=20 with the second override).

Sampler (sample section, `sampling.SAMPLERS["ks"]`): Kadkhodaie & Simoncelli's ascent with h0 = beta
= sigma_L = 0.01. Upstream has no iteration cap; here sample.max_iters (default 3000, ~4.5x the ~662
updates the defaults need from sigma 1) stops a sample that has not reached sigma_L: the sample
shards record `converged` and `iterations` per sample, and sampling prints how many did not
converge. Raise it with the arg max_iters=N or --config.sample.max_iters=N.
"""
import math

from diffmem import configlib, image_configs as ic

__all__ = ["get_config"]

SIZES = {"digits": 8, "fmnist": 28}


def get_config(arg=None):
    a = configlib.parse_arg(arg, data="digits", dir="", alpha=1.0, pool=2000, size=80, n=10,
                            set="first", order_seed=0, arch="bf_unet", blocks=0, kernels=64,
                            layers=21, epochs=1000, epoch_images=250_000, batch=512, lr=1e-3,
                            halve_every=100, steps=0, seed=0, samples=16, max_iters=3000)
    if a.set not in ("first", "last"):
        raise configlib.ConfigError(f"set must be 'first' (S1) or 'last' (S2); got {a.set!r}.")
    source = {"calpha": f"calpha:alpha={a.alpha},n={a.pool}", "discs": f"discs:n={a.pool}",
              "celeba80": f"celeba80:{a.dir}", "lsun80": f"lsun80:{a.dir}"}.get(a.data, a.data)
    size = SIZES.get(a.data, a.size)
    blocks = a.blocks or next(b for b in (3, 2, 1) if size % 2 ** b == 0)
    if a.arch == "bf_unet":
        model = dict(name="bf_unet", num_kernels=a.kernels, num_blocks=blocks, num_enc_conv=2,
                     num_mid_conv=2, num_dec_conv=2)
    elif a.arch == "bf_cnn":
        model = dict(
            name="bf_cnn", num_layers=a.layers, num_kernels=a.kernels, first_layer_linear=False
        )
    else:
        raise configlib.ConfigError(f"arch must be 'bf_unet' or 'bf_cnn'; got {a.arch!r}.")
    steps_per_epoch = math.ceil(a.epoch_images / a.batch)
    steps = a.steps or a.epochs * steps_per_epoch
    log_every = min(steps_per_epoch, steps)
    ckpt_every = min(10 * steps_per_epoch, steps)
    diffusion = ic.diffusion_section("ve")
    diffusion["precond_fields"].update(sigma_min=0.02, sigma_max=2.0)
    return ic.assemble(
        seed=a.seed,
        data=ic.data_section(source, a.n, subset=a.set, subset_seed=a.order_seed,
                             image_size=0 if a.data in SIZES else size),
        model=model,
        diffusion=diffusion,
        loss=dict(name="blind", images_per_step=a.batch, max_sigma_255=255.0,
                  units="net sees (x + 1) / 2 in [0, 1]; D = 2 D01((x + 1) / 2) - 1"),
        optim=dict(
            ic.optim_section(a.lr), decay_every=a.halve_every * steps_per_epoch, decay_factor=0.5
        ),
        ema=dict(decay=0.0, warmup=False),  # no EMA: decay 0 makes the EMA params the params
        batch_size=a.batch,
        steps=steps,
        steps_per_call=math.gcd(log_every, ckpt_every),
        log_every=log_every,
        ckpt_every=ckpt_every,
        sample=dict(num=a.samples, sampler="ks", batch=a.samples, h0=0.01, beta=0.01, sigma_L=0.01,
                    init_mean=0.0, max_iters=a.max_iters),
        study=dict(psnr_sigmas_255=[float(v) for v in (10 ** (2.5 * i / 9) for i in range(10))],
                   test_images=512, seeds_from=0),
    )
