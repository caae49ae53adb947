"""builders.build(config) -> Experiment: the one place a config is read; everything below takes the
record."""
from __future__ import annotations

import ast
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffmem import builders, config_schema, configlib, sampling
from diffmem.experiment import Experiment, SamplerChoice

from test_imports import package_modules

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The boundary: modules that read configs (and the studies, whose entry points take one) build the
# Experiment; every other module takes it, or explicit arguments.
BOUNDARY = ("diffmem.builders", "diffmem.configlib", "diffmem.config_schema",
            "diffmem.image_configs", "diffmem.schedules", "diffmem.data.pools", "diffmem.workdir",
            "diffmem.generate", "diffmem.train", "diffmem.cli", "diffmem.machines.models",
            "diffmem.studies", "diffmem.importers", "diffmem.configs")
CONFIG_NAMES = {"config", "cfg"}
# `config` there is the JSON dict recorded with a checkpoint
JSON_RECORDS = {"diffmem.checkpoint.save"}


def load(spec):
    return configlib.load_config_file(os.path.join(REPO, "configs", spec))


def test_no_function_below_the_boundary_takes_a_config():
    offenders = []
    for mod, path in package_modules().items():
        if mod.startswith(BOUNDARY):
            continue
        tree = ast.parse(open(path).read())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
                if (
                    CONFIG_NAMES & {a.arg for a in args}
                    and f"{mod}.{node.name}" not in JSON_RECORDS
                ):
                    offenders.append(f"{mod}.{node.name}:{node.lineno}")
    assert not offenders, offenders


def test_build_gives_every_part_once_and_a_short_repr():
    c = load("digits.py:k=4+8")
    exp = builders.build(c)
    assert isinstance(exp, Experiment)
    assert (exp.network_name, exp.data_shape, exp.sde, exp.data_range) == ("ddpm_unet", (8, 8, 1),
                                                                           None, (-1.0, 1.0))
    assert [m.name for m in exp.members] == ["4", "8"] and [s.steps for s in exp.schedules] == [
        c.steps
    ] * 2
    assert exp.sigma_range == builders.sigma_range(c) and not exp.is_vector
    assert exp.sampler == SamplerChoice("ddpm_ancestral", "ddpm_ancestral", {"num_steps": 1000},
                                        {"timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02},
                                        256)
    assert (exp.training.steps_per_call, exp.training.ema_decay, exp.training.monitor) == (
        c.steps_per_call, c.ema.decay, None)
    text = repr(exp)
    assert len(text) < 300 and "array" not in text and "['4', '8']" in text
    assert "array" not in repr(exp.members[0])
    # The denoiser of the Experiment is the config's builders.denoiser, bit for bit.
    params = jax.jit(exp.network.init)(jax.random.key(0), jnp.zeros((1, 8, 8, 1)), jnp.ones((1,)))
    x, sigma = jnp.asarray(exp.members[0].data), jnp.full((4,), 0.5)
    np.testing.assert_array_equal(exp.denoiser(params)(x, sigma),
                                  builders.denoiser(c, exp.network, params)(x, sigma))
    m = exp.model(exp.members[0], params, 7)
    assert (m.name, m.k, m.step, m.kind, (m.sigma_min, m.sigma_max)) == ("4", 4, 7, "trained",
                                                                         exp.sigma_range)


def test_a_toy_experiment_has_its_sde_and_vector_network():
    exp = builders.build(load("circle.py"))
    assert exp.is_vector and exp.sde is not None and exp.precond is None and exp.sigma_range is None
    m = exp.optimal(exp.members[0])
    assert m.kind == "optimal" and m.sde == exp.sde


def test_registries_are_the_schema_names_one_meaning_each():
    assert set(builders.NETWORKS) == set(config_schema.MODEL_KEYS)
    assert set(builders.LOSS_BUILDERS) == set(config_schema.LOSS_KEYS)
    assert set(sampling.SAMPLERS) == set(config_schema.SAMPLER_SETTINGS)
    names = list(builders.NETWORKS) + list(builders.LOSS_BUILDERS) + list(sampling.SAMPLERS)
    assert len(names) == len(set(names)), "a name means a network, a loss or a sampler, not two"
    assert "ddpm" not in names   # "ddpm" is the preconditioning only


def test_sampler_choice_resolves_given_then_section_then_grid_then_defaults():
    exp = builders.build(load("digits.py:k=4"))
    m = exp.optimal(exp.members[0])
    ch = exp.sampler
    assert ch.settings("ddpm_ancestral", m) == dict(timesteps=1000, beta_start=1e-4, beta_end=0.02)
    assert ch.settings("ddim", m, num_steps=7)["num_steps"] == 7                   # given
    # not its section
    assert ch.settings("ddim", m)["num_steps"] == sampling.SAMPLERS["ddim"].settings["num_steps"]
    assert ch.for_kind("optimal") == "ddpm_ancestral"
    with pytest.raises(Exception, match=r"no setting\(s\) \['bogus'\]; its settings"):
        ch.settings("ddim", m, bogus=1)
