"""The public surface: `dir(diffmem)`, the re-exported core, every module's `__all__`, no matplotlib
backend chosen at import, and `diffmem.sample` drawing what bin/sample.py's registry path draws."""
from __future__ import annotations

import ast
import importlib
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffmem
from diffmem import configlib, devices, energy, generate, sampling
from diffmem.errors import InputError
from diffmem.experiment import SamplerChoice
from diffmem.model import Model
from diffmem.workdir import Workdir
from test_imports import package_modules  # every module under diffmem/, one walk for both tests

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "diffmem")

CORE = {"Model": "diffmem.model", "Workdir": "diffmem.workdir", "VESDE": "diffmem.sde",
        "GeometricVESDE": "diffmem.sde", "VPSDE": "diffmem.sde", "EDM": "diffmem.precond",
        "VP": "diffmem.precond", "VE": "diffmem.precond", "DDPM": "diffmem.precond",
        "empirical_denoiser": "diffmem.energy", "dense_am_energy": "diffmem.energy",
        "diffusion_energy": "diffmem.energy", "sample": "diffmem.sample_api",
        "nearest": "diffmem.metrics.neighbours", "classify": "diffmem.metrics.classify",
        "memorization_ratio": "diffmem.metrics.memorization",
        "log_likelihood": "diffmem.likelihood"}


def test_dir_lists_the_public_names_and_submodules_only():
    names = dir(diffmem)
    assert set(CORE) <= set(names)
    for sub in ("workdir", "stats", "devices", "layout", "model", "sampling", "energy", "metrics",
                "sample_api", "viz", "sde", "precond", "likelihood", "seeds", "errors"):
        assert sub in names
        assert getattr(diffmem, sub) is importlib.import_module(f"diffmem.{sub}")
    assert not [n for n in names if n.startswith("_") and not n.startswith("__")], names
    assert "_SUBMODULES" not in names and "importlib" not in names
    assert sorted(diffmem.__all__) == diffmem.__all__ and set(diffmem.__all__) <= set(names)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        diffmem.nope  # noqa: B018


def test_importing_the_package_stays_cheap():
    code = ("import sys, diffmem; names = dir(diffmem); "
            "assert 'jax' not in sys.modules and 'matplotlib' not in sys.modules, names")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


@pytest.mark.parametrize("name", sorted(CORE))
def test_core_names_resolve_to_their_module(name):
    assert getattr(diffmem, name) is getattr(importlib.import_module(CORE[name]), name)


def test_every_module_has_an_all_of_names_it_defines():
    missing, unknown = [], {}
    for mod, path in sorted(package_modules().items()):
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        bound, declared = set(), None
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                bound.add(node.name)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                bound |= {(a.asname or a.name).split(".")[0] for a in node.names}
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    if isinstance(t, ast.Name):
                        bound.add(t.id)
                        if t.id == "__all__":
                            try:
                                declared = ast.literal_eval(node.value)
                            except ValueError:  # computed (the package's): read it
                                declared = importlib.import_module(mod).__all__
        if declared is None:
            missing.append(mod)
            continue
        lazy = mod == "diffmem"  # the package resolves its names on access (checked above)
        bad = [n for n in declared if n not in bound and not lazy]
        if bad:
            unknown[mod] = bad
    assert not missing, f"modules without __all__: {missing}"
    assert not unknown, f"__all__ names a module does not define: {unknown}"


def test_metrics_package_says_what_each_module_is():
    import diffmem.metrics as metrics
    doc = metrics.__doc__ or ""
    for f in os.listdir(os.path.join(PACKAGE, "metrics")):
        if f.endswith(".py") and f != "__init__.py":
            assert f[:-3] in doc, f


def test_importing_viz_keeps_the_notebook_backend():
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    code = ("import matplotlib; matplotlib.use('svg'); before = matplotlib.get_backend(); "
            "import diffmem.viz, diffmem.metrics.jacobian, diffmem.studies.training_time; "
            "after = matplotlib.get_backend(); assert before == after == 'svg', (before, after)")
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=REPO)
    env["MPLBACKEND"] = "svg"
    code = ("import matplotlib, diffmem.viz; "
            "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend()")
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=REPO)


def test_no_plain_tqdm_import():
    for mod, path in package_modules().items():
        with open(path) as f:
            assert "from tqdm import tqdm" not in f.read(), f"{mod}: use tqdm.auto"


# ------------------------------------------------------------------- one example or a batch
def test_empirical_denoiser_takes_one_example_or_a_batch():
    y = jnp.asarray([[0.0, 1.0], [1.0, 0.0]])
    d = energy.empirical_denoiser(y)
    x = jnp.asarray([0.2, 0.9])
    one = d(x, 0.1)
    assert one.shape == (2,)
    np.testing.assert_allclose(one, d(x[None], jnp.asarray([0.1]))[0])
    np.testing.assert_allclose(energy.dense_am_energy(x, y, 2.0),
                               energy.dense_am_energy(x[None], y, 2.0)[0])
    with pytest.raises(InputError, match=r"one example of shape \(2,\)"):
        d(jnp.ones(3), 0.1)
    with pytest.raises(InputError, match=r"batch x \(B, \*S\)"):
        diffmem.log_likelihood(None, diffmem.VESDE(), x, denoiser=d)


# ---------------------------------------------------------------------------- diffmem.sample
def gaussian_denoiser(mu, s):
    """The exact denoiser of N(mu, s^2 I): E[x0 | x] = mu + s^2 / (s^2 + sigma^2) (x - mu)."""
    def denoiser(x, sigma):
        g = s**2 / (s**2 + jnp.reshape(sigma, (-1,) + (1,) * (x.ndim - 1)) ** 2)
        return mu + g * (x - mu)
    return denoiser


def test_sample_of_a_plain_denoiser_is_the_registry_path(one_device):
    d = gaussian_denoiser(jnp.asarray([1.0, -2.0]), 0.5)
    seeds = np.arange(5, 37)
    got = diffmem.sample(d, seeds, shape=(2,), sampler="edm_heun", num_steps=12)
    model = Model.from_denoiser(d, shape=(2,), sigma_range=(0.002, 80.0))
    settings = SamplerChoice("").settings("edm_heun", model, num_steps=12)
    run = sampling.get_sampler("edm_heun", model).build(model, **settings)
    want = np.asarray(sampling.sample_sharded(run, seeds, devices.data_mesh()))
    np.testing.assert_array_equal(got, want)
    assert np.all(np.abs(got.mean(0) - [1.0, -2.0]) < 0.5)  # samples of N(mu, 0.25 I)
    np.testing.assert_array_equal(diffmem.sample(d, "5-36", shape=(2,), num_steps=12), got)
    with pytest.raises(InputError, match="needs shape"):
        diffmem.sample(d, seeds)
    with pytest.raises(InputError, match="has no setting"):
        diffmem.sample(d, seeds, shape=(2,), sampler="edm_heun", eta=0.5)


def test_sample_draws_what_bin_sample_writes(tmp_path):
    config = configlib.load_config_file(os.path.join(REPO, "configs/digits.py") + ":k=16")
    seeds = np.arange(3, 9)
    mesh = devices.data_mesh(jax.devices()[:1])
    generate.sample_workdir(str(tmp_path), seeds, "edm_euler", model="optimal", config=config,
                            num_steps=3, mesh=mesh, progress=False)
    wd = Workdir(str(tmp_path))
    written = wd.read_samples("16", "optimal")["samples"]
    m = wd.model("16", kind="optimal")
    got = diffmem.sample(m, seeds, "edm_euler", experiment=wd.experiment, num_steps=3, mesh=mesh)
    np.testing.assert_array_equal(got, written)
    plain = diffmem.sample(energy.empirical_denoiser(jnp.asarray(m.train_data)), seeds,
                           "edm_euler", shape=m.shape, sigma_range=(m.sigma_min, m.sigma_max),
                           data_range=m.data_range, num_steps=3, mesh=mesh)
    np.testing.assert_allclose(plain, written, atol=1e-6)


# ------------------------------------------------------------------- flags across bin/
def test_bin_flags_mean_one_thing():
    """--steps is training steps (sampler steps are --sample_steps), --seeds a seed range read by
    diffmem.seeds.parse_seeds, --kind=trained|optimal (never --model) for the model kind."""
    folder = os.path.join(REPO, "diffmem", "commands")   # bin/*.py run these
    for f in sorted(os.listdir(folder)):
        if not f.endswith(".py"):
            continue
        with open(os.path.join(folder, f)) as fh:
            text = re.sub(r"\(\s+", "(", re.sub(r"\s+", " ", fh.read()))   # calls on one line
        assert 'DEFINE_enum("model"' not in text, f"{f}: the kind flag is --kind"
        steps = re.search(r'DEFINE_\w+\("steps",[^"]*"([^"]*)"', text)
        assert steps is None or "raining steps" in steps.group(1), f"{f}: --steps is training steps"
        seeds = re.search(r'DEFINE_(\w+)\("seeds"', text)
        if seeds:
            assert seeds.group(1) == "string" and "parse_seeds(FLAGS.seeds" in text, f


def test_sample_of_a_toy_model_takes_the_config_settings(tmp_path, one_device):
    """EM on the circle's optimal model: with the workdir's config, diffmem.sample uses its
    sample.eps (1e-4) as bin/sample.py does, and draws the samples the workdir path writes."""
    config = configlib.load_config_file(os.path.join(REPO, "configs/circle.py") + ":k=2")
    seeds = np.arange(4)
    generate.sample_workdir(str(tmp_path), seeds, "em", model="optimal", config=config,
                            num_steps=20, progress=False)
    wd = Workdir(str(tmp_path))
    data = wd.read_samples("2", "optimal")
    assert data["settings"]["eps"] == 1e-4
    m = wd.model("2", kind="optimal")
    got = diffmem.sample(m, seeds, experiment=wd.experiment, num_steps=20)
    np.testing.assert_array_equal(got, data["samples"])
    assert not np.array_equal(diffmem.sample(m, seeds, num_steps=20), got)  # eps = t_min = 1e-5


def test_registry_build_takes_defaults_and_names_what_a_plain_denoiser_needs(one_device):
    d = gaussian_denoiser(jnp.asarray([1.0, -2.0]), 0.5)
    spec = sampling.get_sampler("edm_heun")
    with pytest.raises(InputError, match=r"Model.from_denoiser\(D, shape=S"):
        spec.build(d)
    model = Model.from_denoiser(d, shape=(2,), sigma_range=(0.002, 80.0))
    seeds = np.arange(8)
    np.testing.assert_array_equal(  # settings left out take their defaults (18 steps)
        np.asarray(spec.build(model)(seeds)), np.asarray(spec.build(model, num_steps=18)(seeds)))
