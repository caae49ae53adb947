"""Kadkhodaie et al.'s data: C-alpha and disc recipes, CelebA preparation from files, disjoint S1 /
S2."""

import numpy as np
import pytest

from diffmem.data import subsets, synthetic


def test_c_alpha_images_recipe():
    x = synthetic.c_alpha_images(6, size=16, alpha=2.0, seed=3)
    assert x.shape == (6, 16, 16) and x.min() >= 0 and x.max() <= 1
    np.testing.assert_array_equal(x, synthetic.c_alpha_images(6, size=16, alpha=2.0, seed=3))
    # Blur: 2x2 mean over rows {i-1, i} x cols {j-1, j}, reflect at the top / left (row -1 is row
    # 1).
    m = np.random.default_rng(0).uniform(size=(5, 5))
    brute = np.empty_like(m)
    for i in range(5):
        for j in range(5):
            rows, cols = [abs(i - 1), i], [abs(j - 1), j]
            brute[i, j] = np.mean([m[a, b] for a in rows for b in cols])
    np.testing.assert_allclose(synthetic.blur2(m), brute)


def test_contour_rows_are_clipped_not_wrapped():
    # Upstream's M[0:r] with a negative r would zero all but the last |r| rows; clipped, nothing is
    # zeroed.
    r = synthetic.contour_rows(np.array([-1.0, 0.0, 0.02, 1.0]), 10)
    np.testing.assert_array_equal(r, [0, 5, 5, 10])
    mask = synthetic.contour_mask(r, 10)
    np.testing.assert_array_equal(mask.sum(0), [10, 5, 5, 0])


def test_disc_images():
    fixed = synthetic.disc_images(
        2, size=32, seed=0, translate=False, scale=False, foreground=False, background=False
    )
    assert set(np.unique(fixed)) == {0.0, 1.0}
    area = fixed[0].sum()
    assert abs(area - np.pi * 8 ** 2) < 2 * np.pi * 8  # radius S // 4 = 8, centre S / 2
    rand = synthetic.disc_images(20, size=16, seed=1)
    assert all(len(np.unique(im)) == 2 for im in rand)
    low = synthetic.disc_images(3, size=16, seed=1, antialiasing=1)
    assert low.shape == (3, 16, 16) and -0.2 < low.min() and low.max() < 1.2  # db2 rings slightly


def test_disjoint_sets_from_one_recorded_order():
    s1, s2 = (subsets.disjoint_set(100, 50, 7, w) for w in ("first", "last"))
    assert len(set(s1) & set(s2)) == 0
    order = subsets.fixed_order(100, 7)
    np.testing.assert_array_equal(np.concatenate([s1, s2]), order)
    np.testing.assert_array_equal(subsets.disjoint_set(10, 3, -1, "last"), [7, 8, 9])
    with pytest.raises(ValueError, match="half the pool"):
        subsets.disjoint_set(100, 51, 7, "first")


def test_prepare_celeba_from_tiny_files(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(0)
    faces = [rng.integers(0, 256, (218, 178, 3), dtype=np.uint8) for _ in range(3)]
    faces[2] = faces[0]  # an exact duplicate, later in sorted order: dropped
    for name, im in zip(["b.png", "a.png", "c.png"], [faces[1], faces[0], faces[2]]):
        Image.fromarray(im).save(tmp_path / name)
    # near-duplicate of b.png (JPEG): dropped
    Image.fromarray(faces[1]).save(tmp_path / "d.jpg", quality=95)
    (tmp_path / "notes.txt").write_text("not an image")
    out = synthetic.prepare_celeba(str(tmp_path))
    assert out["files"] == ["a.png", "b.png"]
    assert out["images"].shape == (2, 80, 80) and out["images"].dtype == np.float32
    assert out["sha256"] == synthetic.file_list_sha256(["a.png", "b.png", "c.png", "d.jpg"])
    crop = faces[0][29:-29, 9:-9]
    ref = (
        np.asarray(Image.fromarray(crop).resize((80, 80), Image.BICUBIC), np.float64).mean(-1) / 255
    )
    np.testing.assert_allclose(out["images"][0], ref, atol=1e-6)
    with pytest.raises(FileNotFoundError, match="img_align_celeba"):
        synthetic.prepare_celeba(str(tmp_path / "missing"))


def test_builder_source_gives_signed_images():
    data = synthetic.load("calpha:alpha=1,n=4,seed=2", image_size=8)
    assert data.images.shape == (4, 8, 8, 1) and data.images.min() >= -1 and data.images.max() <= 1
    with pytest.raises(ValueError, match="unknown options"):
        synthetic.load("calpha:alpa=1", image_size=8)
