"""Pham et al.'s MNIST setting: a DDPM UNet on K-image subsets of the 60,000 28x28 digits.

    python bin/train.py --config=configs/mnist.py:k=1000 --workdir=runs/mnist
    python bin/sample.py --workdir=runs/mnist --seeds=0-9999

Data: TFDS `mnist` prepared in the array_record format (no TensorFlow needed to read it; the loader
says how to prepare it when it is missing), or --config.data.source=npz:/path/mnist.npz. Pham et
al.'s configs/mnist.yaml: DDPM UNet ch 128, multipliers 1,2,2, 2 blocks, attention list (16,),
dropout 0.1, NIN layers initialised at scale 0.1, epsilon loss, Adam 2e-4 clipped at norm 1, batch
128, EMA 0.9999, 400k iterations (a GPU job). Sampler: DDPM ancestral, 1000 steps, as Pham et al.
Arg keys: k, steps, seed, lr, batch (0 = the recipe's), arch (ddpm_unet | ddpmpp), precond (ddpm |
vp | ve | edm).
"""
from diffmem import image_configs as ic

__all__ = ["get_config"]

MNIST = ic.ImageSet(source="tfds:mnist", ddpm_mult=(1, 2, 2), pham_steps=400_000)


def get_config(arg=None):
    return ic.recipe_config(ic.parse_args("mnist", arg, **ic.COMMON_ARGS), MNIST)
