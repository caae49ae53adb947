"""diffmem.config_schema: one schema for every config (the same top-level sections, checked keys
that name the valid ones on a typo) and config.json files of the previous schema migrated on load
(old workdirs keep working, reruns are accepted, samples are the same)."""
import json
import os

import jax
import numpy as np
import pytest

from diffmem import builders, config_schema, configlib, devices, generate, train
from diffmem.workdir import RERUN_KEYS, Workdir, config_differences

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPECS = ["circle.py", "gmm.py:dim=3", "digits.py", "digits.py:arch=ddpmpp,precond=edm", "mnist.py",
         "fmnist.py:arch=ddpmpp", "cifar10.py:arch=ddpmpp,precond=vp", "celeba.py", "kadkhodaie.py",
         "kadkhodaie.py:data=calpha,arch=bf_cnn", "molrg.py:k=4+16"]

# config.json as the previous schema wrote them (configs/circle.py:k=2 and configs/digits.py:k=16):
# the toy noise process in a section `sde`, image `diffusion` without `kind`, no schedule / monitor
# / ... for toys.
OLD_CIRCLE = json.loads("""{"batch_size": 500, "ckpt_every": 5000, "data": {"k": 2,
 "name": "circle", "pool_size": 60000, "subset_seed": 9}, "ema": {"decay": 0.9999, "warmup": true},
 "keep_checkpoints": 2, "log_every": 1000, "loss": {"name": "dsm"}, "model": {"embed": 128,
 "fourier_scale": 16.0, "hidden": 128, "name": "mlp", "num_layers": 4}, "optim": {"b1": 0.9,
 "b2": 0.999, "eps": 1e-08, "grad_clip": 0.0, "lr": 0.0001}, "sample": {"eps": 0.0001, "num": 1500,
 "num_steps": 1000, "sampler": "em"}, "sde": {"name": "ve", "sigma_max": 1.0, "t_min": 1e-05},
 "seed": 9, "steps": 50000, "steps_per_call": 1000, "study": {"attractor_starts": 400,
 "bounds": 1.5, "delta_m": 0.1, "delta_s": 0.1, "empirical_eps": 0.001, "grid": 75,
 "lik_tol": 3e-06, "min_cluster_frac": 0.01, "t_eval": 0.15, "thresholds": [3.0, 2.0, 0.45]}}""")
OLD_DIGITS = json.loads("""{"batch_size": 64, "ckpt_every": 1000, "data": {"center_crop": false,
 "data_dir": "", "grayscale": false, "image_size": 0, "k": 16, "labels": "none", "name": "images",
 "source": "digits", "split": "train", "subset": "permutation", "subset_seed": 0},
 "diffusion": {"beta_end": 0.02, "beta_start": 0.0001, "precond": "ddpm",
 "precond_fields": {"timestep": "nearest"}, "timesteps": 1000}, "ema": {"decay": 0.999,
 "warmup": true}, "keep_checkpoints": 2, "log_every": 100, "loss": {"name": "ddpm",
 "reduction": "mean"}, "matmul_precision": "default", "model": {"attn_resolutions": [4], "ch": 32,
 "ch_mult": [1, 2], "dropout": 0.1, "name": "ddpm", "nin_init_scale": 1.0, "num_groups": 8,
 "num_res_blocks": 1}, "optim": {"b1": 0.9, "b2": 0.999, "eps": 1e-08, "grad_clip": 1.0,
 "lr": 0.001, "warmup_steps": 200}, "sample": {"batch": 256, "num": 256, "num_steps": 1000,
 "optimal_sampler": "ddpm", "sampler": "ddpm"}, "schedule": {"duration_mimg": 0.0,
 "ema_halflife_mimg": 0.0, "ema_mode": "edm", "ema_rampup_ratio": 0.0, "lr_rampup_mimg": 0.0,
 "scale_with_k": false}, "seed": 0, "steps": 4000, "steps_per_call": 100}""")


def load(spec):
    return configlib.load_config_file(os.path.join(REPO, "configs", spec))


def old_workdir(tmp_path, name, obj):
    path = tmp_path / name
    path.mkdir()
    (path / "config.json").write_text(json.dumps(obj))
    return str(path)


def test_every_config_has_the_same_sections_and_the_monitor_is_off_by_default():
    want = list(config_schema.SECTIONS)
    kinds = set()
    for spec in SPECS:
        c = load(spec)
        assert sorted(c.keys()) == sorted(want), spec
        assert c.monitor.to_dict() == dict(
            every=0, num_samples=256, level=0.0, metric="pixel", snapshots=()
        ), spec
        kinds.add(builders.diffusion_kind(c))
        # what the config is, from its sections: toy SDE score networks vs preconditioned denoisers
        assert (builders.diffusion_kind(c) == "sde") == (c.model.name == "mlp"), spec
    assert kinds == {"sde", "precond"}
    assert "monitor" in RERUN_KEYS
    old = json.loads(configlib.to_json(load("circle.py")))
    assert config_differences(old, dict(old, monitor=dict(old["monitor"], every=1000))) == []


def test_a_misspelt_section_or_key_names_the_valid_ones():
    c = load("circle.py")
    with c.unlocked():
        c.optimizer = c.optim
    with pytest.raises(configlib.ConfigError, match=r"\['optimizer'\].*valid sections.*'optim'"):
        configlib.validate(c)
    for section, bad, good in (("model", "hiden", "hidden"),
                               ("diffusion", "sigma_maxx", "sigma_max"),
                               ("optim", "learning_rate", "lr"), ("monitor", "evry", "every"),
                               ("sample", "num_step", "num_steps")):
        c = load("circle.py")
        with c[section].unlocked():
            c[section][bad] = 1
        with pytest.raises(
            configlib.ConfigError, match=rf"\['{bad}'\] in config\.{section}.*'{good}'"
        ):
            configlib.validate(c)
    c = load("digits.py")
    with c.diffusion.unlocked():
        c.diffusion.kind = "sdee"
    with pytest.raises(
        configlib.ConfigError, match=r"diffusion.kind = 'sdee'.*\['sde', 'precond'\]"
    ):
        configlib.validate(c)
    c = load("digits.py")
    with c.unlocked():
        del c["loss"]
    with pytest.raises(configlib.ConfigError, match=r"lacks the section\(s\) \['loss'\]"):
        configlib.validate(c)
    # command-line overrides, as before
    with pytest.raises(configlib.ConfigError, match="valid keys there"):
        configlib.parse_config_argv(
            [f"--config={REPO}/configs/circle.py", "--config.monitor.evry=5"]
        )


def test_old_config_json_is_migrated_on_load_and_a_rerun_of_the_same_experiment_is_accepted(
    tmp_path,
):
    for spec, old in (("circle.py:k=2", OLD_CIRCLE), ("digits.py:k=16", OLD_DIGITS)):
        new = json.loads(configlib.to_json(load(spec)))
        # the previous schema's file, exactly migrated
        assert config_schema.migrate(old) == new
        assert config_schema.migrate(new) == new
        path = old_workdir(tmp_path, spec.replace(":", "_"), old)
        wd = Workdir(path)
        assert json.loads(configlib.to_json(wd.config)) == new
        # the same experiment: no difference
        wd.check_config(load(spec), keep_steps=True)
        changed = load(spec)
        changed.optim.lr = 0.5
        with pytest.raises(configlib.ConfigError, match=r"differs in \['optim'\]"):
            wd.check_config(changed)
        # a rerun is accepted and records the new schema
        Workdir(path).write_config(load(spec))
        assert json.loads(open(os.path.join(path, "config.json")).read()) == new
    m = Workdir(old_workdir(tmp_path, "old_circle", OLD_CIRCLE)).model("2", kind="optimal")
    assert (
        m.sde == builders.build_sde(load("circle.py"))
        and m.sigma_max == pytest.approx(1.0)
        and m.data_range is None
    )
    m = Workdir(old_workdir(tmp_path, "old_digits", OLD_DIGITS)).model("16", kind="optimal")
    assert m.sde is None and (m.sigma_min, m.sigma_max) == builders.sigma_range(load("digits.py"))
    assert m.data_range == (-1.0, 1.0)


def test_an_old_toy_workdir_samples_exactly_as_a_new_one(tmp_path):
    mesh = devices.data_mesh(jax.devices()[:1])
    kw = dict(sampler="em", model="optimal", num_steps=5, mesh=mesh, progress=False)
    old = old_workdir(tmp_path, "old", OLD_CIRCLE)
    generate.sample_workdir(old, np.arange(4), **kw)
    generate.sample_workdir(str(tmp_path / "new"), np.arange(4), config=load("circle.py:k=2"), **kw)
    a, b = (Workdir(old).read_samples("2", "optimal"),
            Workdir(str(tmp_path / "new")).read_samples("2", "optimal"))
    np.testing.assert_array_equal(a["samples"], b["samples"])
    assert a["settings"] == b["settings"]
    # finished samples are kept, not redone
    assert generate.sample_workdir(old, np.arange(4), **kw)
    assert Workdir(old).read_samples("2", "optimal")["files"] == a["files"]


def test_an_old_toy_workdir_with_finished_training_is_resumed_not_retrained(tmp_path):
    c = load("circle.py:k=2,steps=10")
    c.model.hidden, c.model.embed, c.model.num_layers = 8, 8, 1
    c.steps_per_call, c.log_every, c.ckpt_every = 10, 10, 10
    path = str(tmp_path / "run")
    mesh = devices.data_mesh(jax.devices()[:1])
    first = train.train(c, path, mesh=mesh, progress=False)
    # Rewrite its config.json as the previous schema wrote it (the noise process in `sde`, no new
    # sections).
    old = json.loads(open(os.path.join(path, "config.json")).read())
    diffusion = old.pop("diffusion")
    old["sde"] = dict(
        name=diffusion.pop("sde"), **{k: v for k, v in diffusion.items() if k != "kind"}
    )
    for key in ("schedule", "monitor", "matmul_precision"):
        old.pop(key)
    old["optim"].pop("warmup_steps")
    del old["sample"]["batch"]
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(old, f)
    metrics = open(os.path.join(path, "metrics.jsonl")).read()
    # nothing left to train: same weights
    again = train.train(c, path, mesh=mesh, progress=False)
    jax.tree.map(np.testing.assert_array_equal, again["2"].ema_params, first["2"].ema_params)
    assert open(os.path.join(path, "metrics.jsonl")).read() == metrics
    assert int(Workdir(path).model("2").step) == 10


# -------------------------------------------------------------------------------------- value rules
def _leaves(node, prefix=""):
    for key, value in node.items():
        if key == "study" and not prefix:
            continue  # free-form: each study checks its own settings
        if hasattr(value, "items"):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def test_every_config_value_has_a_rule_and_every_shipped_config_obeys_it():
    for spec in SPECS + ["kadkhodaie.py:arch=bf_unet", "digits.py:arch=ddpmpp,precond=ve"]:
        config = load(spec)
        configlib.check(config, config_schema.RULES)
        for key, value in _leaves(config):
            assert key in config_schema.RULES or key in config_schema.FREE_TEXT, (
                f"{spec}: {key} has no rule"
            )
            if key in config_schema.FREE_TEXT:
                assert isinstance(value, str), (
                    f"{spec}: {key} = {value!r} is free text but not a string"
                )


def test_the_schema_knows_the_samplers_of_the_registry_without_importing_it():
    from diffmem import sampling

    assert config_schema.SAMPLER_SETTINGS == {
        n: tuple(s.settings) for n, s in sampling.SAMPLERS.items()
    }
    # sampling imported: the live registry
    assert config_schema.samplers() == config_schema.SAMPLER_SETTINGS


def test_range_rules_bounds_types_sweeps_and_unset_values():
    rules = {"a": ("range", 0.0, 1.0, "[)"), "b": ("range", 1, 10), "c": ("bool",),
             "d": ("choices", lambda: ("x",)), "e": ("range", 0.0, 1.0, "()")}

    def check(**values):
        configlib.check(configlib.ml_collections.ConfigDict(values), rules)

    check(a=0.0, b=10, c=True, d="x", e=0.5)
    check(a=None, b=(1, 2, 3))  # None: unset; a sweep item by item
    for bad, match in [(dict(a=1.0), r"config.a = 1.0 is out of range: allowed \[0.0, 1.0\)"),
                       (dict(a=float("nan")), "out of range"), (dict(a=True), "out of range"),
                       (dict(b=0), r"allowed \[1, 10\] \(integers\)"), (dict(b=2.5), "integers"),
                       (dict(b=(1, 11)), "config.b = 11"), (dict(c=1), "write true or false"),
                       (dict(d="y"), r"choose one of \['x'\]"),
                       (dict(e=0.0), r"allowed \(0.0, 1.0\)")]:
        with pytest.raises(configlib.ConfigError, match=match):
            check(**bad)
    # Seeds of every kind are 32-bit, K and the number of checkpoints at least 1: refused when read.
    for key, value in [("seed", "-1"), ("seed", "99999999999"), ("data.subset_seed", "-1"),
                       ("keep_checkpoints", "0"), ("optim.b1", "1.5"), ("optim.b2", "1.0")]:
        config = load("circle.py")
        configlib.apply_override(config, key, value)
        with pytest.raises(configlib.ConfigError, match=f"config.{key} = "):
            config_schema.validate(config)


def test_a_sample_shard_of_the_old_ddpm_sampler_name_reads_as_ddpm_ancestral(tmp_path):
    from diffmem import workdir as wdlib
    path = wdlib.write_shard(str(tmp_path / "0-1.npz"), np.zeros((2, 3)), np.arange(2),
                             dict(sampler="ddpm", step=5, timesteps=1000))
    assert wdlib.read_shard(path)["settings"] == dict(
        sampler="ddpm_ancestral", step=5, timesteps=1000
    )


def test_a_workdir_config_json_loads_as_a_config(tmp_path):
    """--config=WD/config.json (an imported model's workdir, or any run's) gives the config it
    holds, migrated from an earlier schema; unreadable JSON is one ConfigError line."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps(OLD_DIGITS))
    got = configlib.load_config_file(str(path))
    want = json.loads(configlib.to_json(load("digits.py:k=16")))
    assert json.loads(configlib.to_json(got)) == want
    path.write_text("{broken")
    with pytest.raises(configlib.ConfigError, match="not readable JSON"):
        configlib.load_config_file(str(path))


def test_shipped_configs_load_by_name_by_path_and_with_a_space():
    assert configlib.config_names() == sorted(
        f[:-3] for f in os.listdir(os.path.join(REPO, "configs")) if f.endswith(".py"))
    by_path = configlib.to_json(load("cifar10.py:k=1000"))
    assert configlib.to_json(configlib.load_config_file("cifar10:k=1000")) == by_path
    config, rest = configlib.parse_config_argv(["--config", "cifar10:k=1000", "--workdir=x"])
    assert configlib.to_json(config) == by_path and rest == ["--workdir=x"]
    with pytest.raises(configlib.ConfigError, match=r"No config named 'cifar11'; the shipped"):
        configlib.load_config_file("cifar11")
    with pytest.raises(configlib.ConfigError, match="--config needs a value"):
        configlib.parse_config_argv(["--config"])
    # the checkout's configs/ files are the shipped ones
    from diffmem.configs import cifar10
    assert load("cifar10.py").to_dict() == cifar10.get_config(None).to_dict()
