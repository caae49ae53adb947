"""End to end on the circle: train with bin/train.py's trainer, sample with bin/sample.py's
driver."""
import os

import jax
import numpy as np
import pytest

from diffmem import builders, configlib, devices, generate, train
from diffmem.data import toy
from diffmem.studies import circle
from diffmem.workdir import Workdir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_k2_circle_model_memorizes(tmp_path):
    """K = 2 trained to convergence: >= 95% of 500 Euler-Maruyama samples within 0.1 of a training
    point.

    The EM run ends at t = 1e-4: at the tutorial's 1e-5 the last step has dt / sigma^2 = 100 and
    amplifies the score error of whatever the network extrapolates below the times it was trained on
    (with the exact score that endpoint puts almost no sample near a training point).
    """
    c = configlib.load_config_file(
        os.path.join(REPO, "configs/circle.py") + ":k=2,steps=30000,lr=3e-4"
    )
    # One device: a batch of 2 split over conftest's 8 fake CPU devices only adds collectives.
    train.train(c, str(tmp_path), mesh=devices.data_mesh(jax.devices()[:1]), progress=False)
    [path] = generate.sample_workdir(str(tmp_path), np.arange(500), "em", eps=1e-4)
    wd = Workdir(str(tmp_path))
    out = wd.read_samples("2")
    assert out["samples"].shape == (500, 2) and out["step"] == 30000
    np.testing.assert_array_equal(out["seeds"], np.arange(500))
    assert os.path.exists(path + ".png")
    d = np.linalg.norm(out["samples"][:, None] - toy.circle_subset(2)[None], axis=-1).min(axis=1)
    assert np.mean(d < 0.1) >= 0.95, np.mean(d < 0.1)
    # The study's scale-free label: memorized within the 10% quantile of fresh circle points'
    # distances to the nearest training point (~0.15 for K = 2).
    spec = wd.specs()[0]
    fresh = np.delete(builders.load_pool(c), spec.indices, axis=0)
    thresholds, _ = circle.calibrated_scales(spec.data, fresh, len(out["samples"]))
    assert np.mean(d <= thresholds.delta_m) >= 0.9, (thresholds.delta_m,
                                                     np.mean(d <= thresholds.delta_m))
    # A rerun with the same request skips; other settings refuse to overwrite silently.
    assert generate.sample_workdir(str(tmp_path), np.arange(500), "em", eps=1e-4) == [path]
    with pytest.raises(FileExistsError, match="--overwrite"):
        generate.sample_workdir(str(tmp_path), np.arange(10), "em", eps=1e-3)
    # Seed splits give identical samples (the same checkpoint named by its step: another sample
    # set).
    generate.sample_workdir(str(tmp_path), np.arange(250), "em", eps=1e-4, step=30000)
    np.testing.assert_array_equal(wd.read_samples("2", step=30000)["samples"], out["samples"][:250])
