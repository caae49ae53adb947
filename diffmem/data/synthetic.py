"""Kadkhodaie et al.'s image sets: C^alpha images, discs, CelebA 80x80 grayscale and LSUN bedroom
crops.

    x = c_alpha_images(1000, size=32, alpha=2.0, seed=0)           # (N, L, L) float64 in [0, 1]
    x = disc_images(1000, size=32, seed=0)                         # (N, L, L) in [0, 1]
    prepared = prepare_celeba("/data/img_align_celeba")            # 80x80 gray, duplicates removed
    # ImageData in [-1, 1] (builders' sources)
    data = load("calpha:alpha=2,n=2000,seed=0", image_size=32)

Recipes: section C.9, C.10 and C.5 of shared/notes/upstream_definitions.md, with their documented
quirks fixed and flagged in comments ("FIX:"). Nothing is downloaded: CelebA and LSUN are read from
local folders.
"""
from __future__ import annotations

import hashlib
import os

import numpy as np

from diffmem.data.images import ImageData

__all__ = ["SOURCE_KINDS", "IMAGE_SUFFIXES", "is_synthetic", "c_alpha_images", "contour_rows",
           "contour_mask", "blur2", "disc_images", "image_files", "file_list_sha256",
           "remove_repeats", "prepare_celeba", "prepare_lsun_bedrooms", "load"]

SOURCE_KINDS = ("calpha", "discs", "celeba80", "lsun80")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def is_synthetic(source: str) -> bool:
    """Whether `source` ("calpha:...", "discs:...", "celeba80:DIR", "lsun80:DIR") is one of this
    module's."""
    return str(source).split(":", 1)[0] in SOURCE_KINDS


# ------------------------------------------------------------------------------------------ C^alpha
def _shifted_freqs(n: int) -> np.ndarray:
    return np.arange(n) - n // 2  # the integer frequency at each fftshifted position


def c_alpha_images(n: int, size: int = 80, alpha: float = 1.0, beta: float | None = None,
                   seed: int = 0) -> np.ndarray:
    """`make_C_alpha_images`: two C^beta backgrounds separated by a C^alpha contour, blurred by 2x2
    averaging.

    Per image: contour c = Re ifft(ifftshift(fftshift(fft(w)) F1^alpha)), w ~ U(-1, 1)^L, F1[k] =
    1/|k| (DC 1); backgrounds Re ifft2 of U(-1, 1)^{LxL} filtered by F2^beta, F2 = 1/|k| (DC 1),
    min-max scaled to [u1, 1] and [0, u2] (roles swapped with probability 1/2); rows above the
    contour take the second background. Returns (n, L, L) float64 in [0, 1].
    """
    beta = alpha if beta is None else beta
    L = size
    k1 = np.abs(_shifted_freqs(L)).astype(np.float64)
    f1 = np.where(k1 == 0, 1.0, 1.0 / np.maximum(k1, 1)) ** alpha
    kx, ky = np.meshgrid(_shifted_freqs(L), _shifted_freqs(L), indexing="ij")
    k2 = np.sqrt(kx ** 2 + ky ** 2)
    f2 = np.where(k2 == 0, 1.0, 1.0 / np.maximum(k2, 1)) ** beta
    rng = np.random.default_rng(seed)
    out = np.empty((n, L, L))
    for i in range(n):
        w = rng.uniform(-1, 1, L)
        c = np.real(np.fft.ifft(np.fft.ifftshift(np.fft.fftshift(np.fft.fft(w)) * f1)))
        r = contour_rows(c, L)
        b = [
            np.real(
                np.fft.ifft2(
                    np.fft.ifftshift(np.fft.fftshift(np.fft.fft2(rng.uniform(-1, 1, (L, L)))) * f2)
                )
            )
            for _ in range(2)
        ]
        u1, u2 = rng.uniform(0, 1, 2)
        lo_hi = [(u1, 1.0), (0.0, u2)] if rng.uniform() < 0.5 else [(0.0, u2), (u1, 1.0)]
        b1, b2 = (_minmax(bi, lo, hi) for bi, (lo, hi) in zip(b, lo_hi))
        m = blur2(contour_mask(r, L))
        out[i] = b1 * m + b2 * (1.0 - m)
    return out


def contour_rows(c: np.ndarray, size: int) -> np.ndarray:
    """Row index of the contour in each column, round(c L) + L/2. FIX (flagged): upstream slices
    M[0:r] with r possibly negative, which zeroes all but the last |r| rows instead of none; here r
    is clipped to [0, L]."""
    return np.clip(np.round(c * size).astype(int) + size // 2, 0, size)


def contour_mask(r: np.ndarray, size: int) -> np.ndarray:
    """M = 1 with M[0:r_i, i] = 0 (rows above the contour), (L, L) float64."""
    return (np.arange(size)[:, None] >= r[None, :]).astype(np.float64)


def _minmax(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return (x - x.min()) / (x.max() - x.min()) * (hi - lo) + lo


def blur2(m: np.ndarray) -> np.ndarray:
    """Upstream's anti-aliasing blur (factor 2): a 2x2 mean over rows {i-1, i} x cols {j-1, j} with
    reflect padding at the top/left (PyTorch 'reflect': row -1 is row 1), the last row and column
    dropped."""
    p = np.pad(m, ((1, 0), (1, 0)), mode="reflect")
    return 0.25 * (p[:-1, :-1] + p[1:, :-1] + p[:-1, 1:] + p[1:, 1:])


# -------------------------------------------------------------------------------------------- discs
_DB2_LO = np.array([1 + np.sqrt(3), 3 + np.sqrt(3), 3 - np.sqrt(3), 1 - np.sqrt(3)]) / (
    4 * np.sqrt(2)
)


def _db2_lowpass_halve(x: np.ndarray) -> np.ndarray:
    """One level of the db2 low-pass band with periodic extension (pywt mode 'periodization'),
    divided by its gain 2 so intensities stay in range. Written out here (no pywt); filter alignment
    as pywt's is UNVERIFIED (it shifts the disc by at most one pixel)."""
    for axis in (0, 1):
        acc = 0.0
        for t, h in enumerate(_DB2_LO[::-1]):
            acc = acc + h * np.roll(x, -t + 1, axis=axis)
        x = np.take(acc, np.arange(0, x.shape[axis], 2), axis=axis)
    return x / 2.0


def disc_images(n: int, size: int = 80, seed: int = 0, *, translate: bool = True,
                scale: bool = True, foreground: bool = True, background: bool = True,
                wrap: bool = False, antialiasing: int = 0) -> np.ndarray:
    """`circle_dataset`: one disc per image on a constant background, (n, L, L) in [0, 1].

    At S = L 2^j: radius ~ U(3, (S-3)//2) (scale) else S//4; centre ~ U(r, S-r) per axis (translate;
        U(0, S)
    with wrap) else S/2; foreground ~ U(0, 1) else 1; background ~ U(0, 1) else 0; pixel u is inside
    when
    |u - c|^2 <= r^2 with the difference taken periodically in [-S/2, S/2). Then j halvings by the
    db2
    low-pass band. FIX: upstream's pywt mode 'reflect' gives (L+3)//2 pixels and gain 2 per level;
    this uses exact periodic halving divided by 2 (the notes' correction). The full random version
    is a 5-parameter manifold (c_x, c_y, r, fg, bg).
    """
    S = size * 2 ** antialiasing
    rng = np.random.default_rng(seed)
    u = np.arange(S, dtype=np.float64)
    out = np.empty((n, size, size))
    for i in range(n):
        r = rng.uniform(3, (S - 3) // 2) if scale else S // 4
        if translate:
            c = rng.uniform(0, S, 2) if wrap else rng.uniform(r, S - r, 2)
        else:
            c = np.array([S / 2, S / 2])
        fg = rng.uniform() if foreground else 1.0
        bg = rng.uniform() if background else 0.0
        dx = (u[:, None] - c[0] + S / 2) % S - S / 2
        dy = (u[None, :] - c[1] + S / 2) % S - S / 2
        x = bg + (fg - bg) * (dx ** 2 + dy ** 2 <= r ** 2)
        for _ in range(antialiasing):
            x = _db2_lowpass_halve(x)
        out[i] = x
    return out


# ------------------------------------------------------------------------------------- CelebA, LSUN
def image_files(folder: str) -> list[str]:
    """The image files of `folder`, sorted by name (upstream used os.listdir's arbitrary order)."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(
            f"{folder} is not a folder. CelebA: download img_align_celeba (202,599 JPEGs, 178x218) "
            f"yourself "
            "and pass its folder; diffmem never downloads data. Offline alternatives: 'digits', "
            "'fmnist', "
            "'calpha:alpha=1'."
        )
    names = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_SUFFIXES))
    if not names:
        raise FileNotFoundError(f"{folder} holds no {'/'.join(IMAGE_SUFFIXES)} files.")
    return names


def file_list_sha256(names: list[str]) -> str:
    return hashlib.sha256("\n".join(names).encode()).hexdigest()


def _read_gray(path: str, crop: tuple[slice, slice], scale: float) -> np.ndarray:
    from PIL import Image
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"))[crop]
    h, w = rgb.shape[:2]
    small = Image.fromarray(rgb).resize((round(w * scale), round(h * scale)), Image.BICUBIC)
    return np.asarray(small, np.float64).mean(axis=-1) / 255.0  # mean over RGB (not luma), [0, 1]


def remove_repeats(
    images: np.ndarray, threshold: float = 0.95, pool: int = 4, block: int = 4096
) -> np.ndarray:
    """Indices kept by `remove_repeats`: images average-pooled by `pool` (80 -> 20), mean removed
    per image, cosine correlation; image i is dropped when |corr(i, j)| > threshold for some j < i
    (the first index of every pair in the strict lower triangle). Blocked, so N = 200,000 needs no N
    x N matrix. (N,) -> kept int64."""
    n, h, w = images.shape
    small = (
        images[:, : h - h % pool, : w - w % pool]
        .reshape(n, h // pool, pool, w // pool, pool)
        .mean((2, 4))
    )
    v = small.reshape(n, -1)
    v = v - v.mean(axis=1, keepdims=True)
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    drop = np.zeros(n, bool)
    for start in range(0, n, block):
        rows = v[start:start + block]
        corr = np.abs(rows @ v[: start + len(rows)].T)
        corr[:, start:] = np.where(
            np.arange(start, start + len(rows))[:, None]
            > np.arange(start, start + len(rows))[None, :],
            corr[:, start:],
            0.0,
        )  # strict lower triangle only
        drop[start:start + len(rows)] = (corr > threshold).any(axis=1)
    return np.flatnonzero(~drop).astype(np.int64)


def prepare_celeba(folder: str, *, scale: float = 0.5, threshold: float = 0.95) -> dict:
    """CelebA 80x80 grayscale as Kadkhodaie et al. (`celebA_to_torch.py`): rows 29:-29, cols 9:-9
    (160x160), PIL bicubic by `scale` (FIX: 0.5 for 80x80; the script's 0.125 is wrong), /255, mean
    over RGB, duplicates removed at |correlation| > threshold; files in sorted order (recorded with
    their sha256). Returns {"images": (N, 80, 80) float32 in [0, 1], "files": kept names, "sha256":
    of all sorted names}."""
    names = image_files(folder)
    imgs = np.stack(
        [_read_gray(os.path.join(folder, f), (slice(29, -29), slice(9, -9)), scale) for f in names]
    )
    keep = remove_repeats(imgs, threshold)
    return {"images": imgs[keep].astype(np.float32), "files": [names[i] for i in keep],
            "sha256": file_list_sha256(names)}


def prepare_lsun_bedrooms(folder: str, *, scale: float = 0.3125) -> dict:
    """LSUN bedrooms as `load_bedrooms_dataset`: top-left 256x256 crop, PIL bicubic by `scale`
    (0.3125 -> 80), then (a diffmem choice, flagged: upstream keeps RGB there) the mean over RGB.
    Sorted files, hashed."""
    names = image_files(folder)
    imgs = np.stack(
        [_read_gray(os.path.join(folder, f), (slice(0, 256), slice(0, 256)), scale) for f in names]
    )
    return {"images": imgs.astype(np.float32), "files": names, "sha256": file_list_sha256(names)}


# -------------------------------------------------------------------------------- builders' sources
def _options(text: str) -> dict:
    out = {}
    for part in filter(None, text.split(",")):
        key, _, value = part.partition("=")
        out[key.strip()] = value.strip()
    return out


def load(source: str, image_size: int | None = None):
    """An `images.ImageData` (N, L, L, 1) in [-1, 1] for the builders' data sources:
    "calpha:alpha=A[,beta=B][,n=N][,seed=S]" and "discs:[n=N][,seed=S][,wrap=1][,antialiasing=J]"
    (image_size default 80), "celeba80:DIR" (img_align_celeba folder), "lsun80:DIR"."""
    kind, _, rest = str(source).partition(":")
    if kind not in SOURCE_KINDS:
        raise ValueError(f"Unknown synthetic source {source!r}; valid kinds: {list(SOURCE_KINDS)}.")
    size = int(image_size or 80)
    if kind in ("calpha", "discs"):
        o = _options(rest)
        valid = {"calpha": {"alpha", "beta", "n", "seed"},
                 "discs": {"n", "seed", "wrap", "antialiasing"}}[kind]
        if set(o) - valid:
            raise ValueError(
                f"{source!r}: unknown options {sorted(set(o) - valid)}; valid: {sorted(valid)}."
            )
        n, seed = int(o.get("n", 2000)), int(o.get("seed", 0))
        if kind == "calpha":
            x = c_alpha_images(
                n, size, float(o.get("alpha", 1.0)), float(o["beta"]) if "beta" in o else None, seed
            )
        else:
            x = disc_images(n, size, seed, wrap=bool(int(o.get("wrap", 0))),
                            antialiasing=int(o.get("antialiasing", 0)))
        name = source
    else:
        prepared = (prepare_celeba if kind == "celeba80" else prepare_lsun_bedrooms)(rest)
        x, name = prepared["images"], f"{kind}:{prepared['sha256'][:12]}"
    return ImageData((2.0 * x - 1.0).astype(np.float32)[..., None], None, name)
