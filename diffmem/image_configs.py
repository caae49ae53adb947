"""The sections every image config shares, written once (configs/digits.py, mnist.py, fmnist.py,
cifar10.py, celeba.py compose them with `diffmem.config_schema.assemble`, the one schema of every
config; `diffmem.builders` reads them).

A config's arg string chooses the architecture and the preconditioning:

    arch      "ddpm_unet"  Ho et al.'s UNet, trained with Pham et al.'s recipe (the default)
              "ddpmpp"  EDM's DDPM++ (SongUNet), trained with Gu et al.'s recipe
    precond   "ddpm" (epsilon loss on 1000 linear-beta steps, the default) | "vp" | "ve" | "edm"

Recipes (what `recipe_sections` returns; every number can be overridden with --config.a.b=...):

    Pham et al. (configs/*.yaml of their code): Adam 2e-4, gradient clipping at norm 1, batch 128
      (min(128, K)), EMA 0.9999 from step 0 (no warm-up), 400k (28 px) / 500k (32 px) iterations,
      log every 500, checkpoint every 2,500; a random K-subset; Ho et al.'s epsilon loss averaged
      over pixels; the UNet's 1x1 ("NIN") layers, attention q/k/v and residual shortcuts,
      initialised at scale 0.1 as in their (score_sde) network code (`model.nin_init_scale`; Ho et
      al.'s TF code: 1.0). Sampler: DDPM ancestral, 1000 steps.
    Gu et al. (EDM's trainer with their |D| scaling): Adam 2e-4, batch 512, no clipping, no
    augmentation,
      dropout 0.13, DDPM++ with 2 blocks per level; a class-balanced K-subset; EDM's loss summed
      over pixels (`loss.reduction = "sum"`, as EDM's training loop); and, for each member with |D|
      = K, its own schedule computed at train time from its K and batch (`diffmem.schedules`,
      `config.schedule`):
        duration    int(2000 * K / 50) kimg (40,000 K images: 78,125 steps for K = 1000 at batch
                    512)
        lr ramp-up  int(K / 5) kimg (linear, from 0)
        EMA         half-life int(K / 100) kimg, decay 0.5^(batch / half-life / (50,000 / K)) per
                    step (their "mode2" default, 0.99929 for every K >= 100 at batch 512; 0 below K
                    = 100), the half-life capped at 5% of the images seen during EDM's ramp-up
      A sweep (k=a+b+...) trains every member for its own K's duration; `steps=...` in the arg
      string trains every member for that many steps instead. Sampler: EDM's Heun, 18 steps (35
      evaluations).
    Zhang et al. sample the empirical optimal denoiser with EDM's Euler sampler (18 steps, no
    second-order
      correction): `sample.optimal_sampler` ("edm_euler" for the continuous preconditionings).
"""
from __future__ import annotations

import dataclasses

import ml_collections

from diffmem import configlib, precond, schedules
# (the configs use them)
from diffmem.config_schema import assemble, optim_section, schedule_section  # noqa: F401

__all__ = ["ARCHS", "PRECONDS", "COMMON_ARGS", "steps_of", "parse_args", "data_section",
           "model_section", "diffusion_section", "loss_section", "GU_SCHEDULE", "sample_section",
           "ImageSet", "gu_schedule", "recipe_config"]

ARCHS = ("ddpm_unet", "ddpmpp")
PRECONDS = tuple(sorted(precond.PRECONDITIONINGS))  # ddpm, edm, ve, vp
# Arg keys of the recipe configs: k (int or a+b sweep), steps / lr / batch (0 = the recipe's; steps
# also takes epochs "100ep" or images "200kimg", see `steps_of`), seed, arch (ddpm_unet | ddpmpp),
# precond (ddpm | vp | ve | edm).
COMMON_ARGS = dict(k=1000, steps="0", seed=0, lr=0.0, batch=0, arch="ddpm_unet", precond="ddpm")


def steps_of(duration: str, k, batch: int, default: int) -> int:
    """The `steps` arg as optimizer steps: "0" = the recipe's `default`; otherwise steps ("20000"),
    epochs of the largest K ("100ep") or training images ("200kimg"), via
    `configlib.duration_to_steps`."""
    if str(duration).strip() in ("", "0"):
        return default
    return configlib.duration_to_steps(
        str(duration), dataset_size=max(configlib.sweep(k)), batch_size=batch
    )


def parse_args(config_name: str, arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """`configlib.parse_arg` plus a check of `arch` and `precond` against ARCHS and PRECONDS."""
    a = configlib.parse_arg(arg, **defaults)
    for key, valid in (("arch", ARCHS), ("precond", PRECONDS)):
        if key in a and a[key] not in valid:
            raise configlib.ConfigError(
                f"{config_name}: unknown {key} {a[key]!r}; valid: {list(valid)}."
            )
    return a


# ----------------------------------------------------------------------------------------- sections
def data_section(source: str, k, *, image_size: int = 0, center_crop: bool = False,
                 grayscale: bool = False, subset: str = "permutation", subset_seed: int = 0,
                 split: str = "train", data_dir: str = "", labels: str = "none") -> dict:
    """`data`: an image source of `diffmem.data.images.load_images` and the K-subset (see
    builders)."""
    return dict(name="images", source=source, k=k, subset=subset, subset_seed=subset_seed,
                split=split, image_size=image_size, center_crop=center_crop, grayscale=grayscale,
                data_dir=data_dir, labels=labels)


def model_section(arch: str, *, channels: int, channel_mult: tuple[int, ...], num_blocks: int,
                  attn_resolutions: tuple[int, ...], dropout: float, num_groups: int = 32,
                  embedding_type: str = "positional", label_dim: int = 0,
                  nin_init_scale: float = 1.0) -> dict:
    """`model` for either architecture from one set of sizes (each keeps its own field names).

    ddpm_unet: DDPMUNet(ch, ch_mult, num_res_blocks, attn_resolutions, dropout, num_groups,
    nin_init_scale: the
      init scale of the 1x1 layers, 1.0 as Ho et al., 0.1 as Pham et al.'s code).
    ddpmpp: SongUNet(channels, channel_mult, num_blocks, attn_resolutions, dropout, embedding_type,
      label_dim, skip_connections / keep_skips_at (None = every skip kept), drop_disabled_skips).
    """
    if arch == "ddpm_unet":
        return dict(name="ddpm_unet", ch=channels, ch_mult=tuple(channel_mult),
                    num_res_blocks=num_blocks, attn_resolutions=tuple(attn_resolutions),
                    dropout=dropout, num_groups=num_groups, nin_init_scale=nin_init_scale)
    if arch == "ddpmpp":
        return dict(name="ddpmpp", channels=channels, channel_mult=tuple(channel_mult),
                    num_blocks=num_blocks, attn_resolutions=tuple(attn_resolutions),
                    dropout=dropout, embedding_type=embedding_type, label_dim=label_dim,
                    skip_connections=None, keep_skips_at=None, drop_disabled_skips=False)
    raise configlib.ConfigError(f"Unknown arch {arch!r}; valid: {list(ARCHS)}.")


def diffusion_section(precond_name: str, *, timesteps: int = 1000, beta_start: float = 1e-4,
                      beta_end: float = 0.02) -> dict:
    """`diffusion`: the preconditioning, its fields at their published defaults (`precond_fields`),
    and the DDPM grid (T, betas) that the DDPM loss and the ddpm / ddim samplers use whatever the
    preconditioning."""
    if precond_name not in PRECONDS:
        raise configlib.ConfigError(f"Unknown precond {precond_name!r}; valid: {list(PRECONDS)}.")
    cls = precond.PRECONDITIONINGS[precond_name]
    grid = {"num_steps", "beta_start", "beta_end"} if precond_name == "ddpm" else set()
    fields = {f.name: f.default for f in dataclasses.fields(cls) if f.name not in grid}
    return dict(kind="precond", precond=precond_name, timesteps=timesteps, beta_start=beta_start,
                beta_end=beta_end, precond_fields=fields)


def loss_section(precond_name: str, reduction: str = "mean") -> dict:
    """`loss`: Ho et al.'s epsilon loss for precond "ddpm", EDM's weighted denoising loss otherwise;
    each example's squared error summed ("sum": EDM's training loop, Gu et al.) or averaged ("mean")
    over its pixels."""
    return dict(name="eps" if precond_name == "ddpm" else "denoising", reduction=reduction)


GU_SCHEDULE = dict(
    duration_mimg=2000.0,
    lr_rampup_mimg=10.0,
    ema_halflife_mimg=0.5,
    ema_rampup_ratio=0.05,
    # their train.py defaults with --duration=2000
    ema_mode="gu",
    scale_with_k=True,
)


def sample_section(precond_name: str, *, num: int, batch: int) -> dict:
    """`sample`: DDPM ancestral sampling on the 1000 steps for "ddpm" (Ho et al., Pham et al.);
    EDM's Heun sampler (18 steps, 35 evaluations; EDM, Gu et al.) for the continuous
    preconditionings. `optimal_sampler`: the sampler for the empirical optimal denoiser: EDM's Euler
    (18 steps, no second-order step) for the continuous preconditionings, as Zhang et al. sample it;
    DDPM ancestral for "ddpm"."""
    if precond_name == "ddpm":
        return dict(num=num, sampler="ddpm_ancestral", optimal_sampler="ddpm_ancestral",
                    num_steps=1000, batch=batch)
    return dict(num=num, sampler="edm_heun", optimal_sampler="edm_euler", num_steps=18, batch=batch)


# ------------------------------------------------------------------------------------------ recipes
@dataclasses.dataclass(frozen=True)
class ImageSet:
    """What a dataset contributes to the recipes: its source and preprocessing, its network sizes
    and Pham et al.'s iteration count for it."""
    source: str
    image_size: int = 0
    center_crop: bool = False
    grayscale: bool = False
    labelled: bool = True                        # class labels (for Gu et al.'s balanced subsets)
    ddpm_mult: tuple[int, ...] = (1, 2, 2, 2)    # DDPM UNet channel multipliers (ch 128, 2 blocks)
    # DDPM++ channel multipliers (128 channels, 2 blocks)
    ddpmpp_mult: tuple[int, ...] = (2, 2, 2)
    attn_resolutions: tuple[int, ...] = (16,)
    pham_steps: int = 500_000


def gu_schedule(k: int, batch: int = 512, duration: float = 2000.0, ema_halflife: float = 0.5
                ) -> schedules.MemberSchedule:
    """Gu et al.'s |D|-scaled schedule of a model trained on `k` images with batch `batch` (module
    docstring), as the trainer computes it: .steps, .lr_rampup_images (.warmup_steps in steps),
    .ema_decay."""
    config = ml_collections.ConfigDict(
        dict(
            steps=0,
            optim=dict(warmup_steps=0),
            schedule=schedule_section(
                **dict(GU_SCHEDULE, duration_mimg=duration, ema_halflife_mimg=ema_halflife)
            ),
        )
    )
    return schedules.member_schedule(config, k, batch)


def recipe_config(a: ml_collections.ConfigDict, ds: ImageSet, *,
                  sample_num: int = 10_000) -> ml_collections.ConfigDict:
    """The config of `ds` for parsed args `a` (k, steps, seed, lr, batch, arch, precond; 0 = the
    recipe's): Pham et al.'s recipe for arch "ddpm_unet", Gu et al.'s for "ddpmpp"."""
    data = dict(source=ds.source, image_size=ds.image_size, center_crop=ds.center_crop,
                grayscale=ds.grayscale)
    if a.arch == "ddpm_unet":
        batch = a.batch or 128
        model = model_section("ddpm_unet", channels=128, channel_mult=ds.ddpm_mult, num_blocks=2,
                              attn_resolutions=ds.attn_resolutions, dropout=0.1, nin_init_scale=0.1)
        return assemble(seed=a.seed, data=data_section(k=a.k, **data), model=model,
                        diffusion=diffusion_section(a.precond),
                        loss=loss_section(a.precond, "mean"),
                        optim=optim_section(a.lr or 2e-4, grad_clip=1.0),
                        ema=dict(decay=0.9999, warmup=False), batch_size=batch,
                        steps=steps_of(a.steps, a.k, batch, ds.pham_steps), steps_per_call=500,
                        log_every=500, ckpt_every=2500,
                        sample=sample_section(a.precond, num=sample_num, batch=512))
    batch = a.batch or 512
    steps = steps_of(a.steps, a.k, batch, 0)   # 0: every member trains for its own K's duration
    model = model_section("ddpmpp", channels=128, channel_mult=ds.ddpmpp_mult, num_blocks=2,
                          attn_resolutions=ds.attn_resolutions, dropout=0.13)
    return assemble(
        seed=a.seed,
        data=data_section(k=a.k, subset="balanced" if ds.labelled else "permutation", **data),
        model=model,
        diffusion=diffusion_section(a.precond),
        loss=loss_section(a.precond, "sum"),
        optim=optim_section(a.lr or 2e-4),
        ema={},
        batch_size=batch,
        steps=steps,
        schedule=schedule_section(**dict(GU_SCHEDULE, duration_mimg=0.0 if steps else 2000.0)),
        steps_per_call=500,
        log_every=500,
        ckpt_every=5000,
        sample=sample_section(a.precond, num=sample_num, batch=512),
    )
