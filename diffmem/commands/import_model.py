"""Import a published diffusion model as a diffmem workdir; then every stage runs on it unchanged.

    python bin/import_model.py --source=network-snapshot.pkl --format=edm \\
        --data=cifar10-binary:cifar-10-binary.tar.gz --workdir=runs/edm-cifar
    python bin/import_model.py --source=checkpoints/1000.pt --format=pham \\
        --data=npz:train_1000.npz --workdir=runs/pham-1000
    python bin/import_model.py --source=ddpm-cifar10-32 --format=diffusers --workdir=runs/ddpm-cifar
    python bin/import_model.py --source=denoisers/UNet/.../model.pt --format=kadkhodaie \\
        --image_size=80 --workdir=runs/kad
    python bin/sample.py --workdir=runs/edm-cifar --seeds=0-99          # then sample, classify, ...

Formats: edm (EDM / DiffMemorize network pickles, DDPM++ SongUNet), pham (Pham et al.'s
train_unet.py checkpoints), diffusers (a UNet2DModel save_pretrained folder of Ho et al.'s layout),
kadkhodaie (their bias-free UNet / BF-CNN model.pt). Files are read without executing anything in
them. --data is the training set (its first --k images, default all); without it the workdir holds a
one-image placeholder. An existing workdir is never overwritten. See
diffmem/importers/workdir_writer.py.
"""
import sys

from absl import flags

from diffmem import cli

FORMATS = ("edm", "pham", "kadkhodaie", "diffusers")  # diffmem.importers.workdir_writer.FORMATS

__all__ = ["main", "run"]

flags.DEFINE_string("source", None, "The model file (or diffusers folder).")
flags.DEFINE_enum("format", None, list(FORMATS), "The source's format.")
flags.DEFINE_string("workdir", None, "The new workdir to write (must not exist).")
flags.DEFINE_string("data", None,
                    "The training set, an image source: cifar10-binary:PATH, npz:PATH, tfds:NAME, "
                    "folder:PATH, digits, fmnist, ... (default: a one-image placeholder).")
flags.DEFINE_integer("k", None, "Training-set size: the first K images of --data (default: all).",
                     lower_bound=1)
flags.DEFINE_integer("image_size", None, "Image side length where the file does not record it "
                     "(kadkhodaie; pham files without args); with --data, resize its images to "
                     "this size.", lower_bound=1)
flags.DEFINE_bool("grayscale", None,
                  "Convert --data to one channel (default: when the network has one).")
flags.DEFINE_bool("first_layer_linear", None, "BF-CNN: no ReLU after the first conv (default: "
                                              "from exp_arguments.pkl, else False).")
flags.mark_flags_as_required(["source", "format", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
    from diffmem.importers.workdir_writer import import_model
    print(import_model(FLAGS.source, FLAGS.format, FLAGS.workdir, FLAGS.data, k=FLAGS.k,
                       image_size=FLAGS.image_size, grayscale=FLAGS.grayscale,
                       first_layer_linear=FLAGS.first_layer_linear))


def run() -> None:
    """`diffmem-import-model` and `python bin/import_model.py`: parse the flags, then run `main`
    (`diffmem.cli.run`)."""
    cli.run(main, sys.argv, module=__name__)


if __name__ == "__main__":
    run()
