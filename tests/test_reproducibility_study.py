"""Zhang et al.'s RP and generalization scores across two sampled workdirs, on fake sample files
with known answers (no training), plus the script end to end."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from diffmem import builders, configlib, report
from diffmem.studies import reproducibility

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _workdir(path, config, samples: dict, optimal: dict = ()):
    path.mkdir()
    (path / "config.json").write_text(configlib.to_json(config))
    for name, (seeds, x) in samples.items():
        report.write_npz(str(path / "samples" / f"{name}.npz"), samples=x,
                         seeds=np.asarray(seeds, np.int64), step=np.int64(10),
                         sampler=np.str_("ddpm_ancestral"))
    for name, (seeds, x) in dict(optimal).items():
        report.write_npz(str(path / "samples" / "optimal" / f"{name}.npz"), samples=x,
                         seeds=np.asarray(seeds, np.int64), step=np.int64(-1),
                         sampler=np.str_("ddpm_ancestral"))
    return str(path)


@pytest.fixture()
def pair(tmp_path):
    """Two workdirs of the real digits config, K = 16. Side a: seeds 0..9 = training images 0..9.
    Side b: seeds 5..14; seeds 5..7 give the same images as side a, seeds 8, 9 give fresh noise."""
    config = configlib.load_config_file(os.path.join(REPO, "configs/digits.py") + ":k=16")
    train = builders.model_specs(config)[0].data
    rng = np.random.default_rng(0)
    noise = np.clip(rng.normal(0, 0.6, (10, 8, 8, 1)), -1, 1).astype(np.float32)
    a = _workdir(tmp_path / "a", config, {"16": (np.arange(10), train[:10])},
                 optimal={"16": (np.arange(10), noise)})
    b_images = np.concatenate([train[5:8], noise[:7]])
    b = _workdir(tmp_path / "b", config, {"16": (np.arange(5, 15), b_images)})
    return a, b


def test_rp_matches_by_seed_and_generalization_counts_copies(pair):
    a, b = pair
    [row] = reproducibility.run(a, b, features="pixel").values()
    assert row["num_pairs"] == 5  # seeds 5..9 on both sides
    assert row["rp"] == pytest.approx(3 / 5)  # seeds 5, 6, 7 identical; 8, 9 are noise vs digits
    assert row["generalization_a"] == 0.0  # every a sample is a training image
    # of the paired b rows, 3 copies, 2 noise
    assert row["generalization_b"] == pytest.approx(2 / 5)
    assert os.path.exists(os.path.join(a, "reproducibility", "16.pixel.json"))
    assert os.path.exists(os.path.join(a, "reproducibility", "scores_vs_k.pixel.png"))
    md = open(os.path.join(a, "reproducibility", "report.pixel.md")).read()
    assert "](scores_vs_k.pixel.png)" in md  # the figure link resolves next to the report
    # no absolute paths in reports
    for f in ("report.pixel.md", "summary.pixel.json", "16.pixel.json"):
        assert os.path.dirname(a) not in open(os.path.join(a, "reproducibility", f)).read(), f
    assert row["b"] == os.path.join("..", "b", "samples", "16") and row["a"] == os.path.join(
        "samples", "16"
    )


def test_against_the_optimal_denoiser_and_a_user_extractor(pair):
    a, _ = pair
    [row] = reproducibility.run(
        a, "optimal", features=lambda x: x.reshape(len(x), -1) + 0.0
    ).values()
    assert row["num_pairs"] == 10 and row["rp"] < 0.5
    assert row["generalization_b"] > 0.5  # noise is far from every digit


def test_missing_samples_and_sscd_say_what_to_do(pair, tmp_path, monkeypatch):
    a, _ = pair
    with pytest.raises(FileNotFoundError, match="same --seeds"):
        reproducibility.run(a, str(tmp_path / "nowhere"), features="pixel")
    monkeypatch.delenv("DIFFMEM_SSCD_ONNX", raising=False)
    with pytest.raises(FileNotFoundError, match="DIFFMEM_SSCD_ONNX"):
        reproducibility.extractor("sscd")
    with pytest.raises(ValueError, match="pixel"):
        reproducibility.extractor("clip")


def test_script_end_to_end(pair):
    a, b = pair
    out = subprocess.run(
        [sys.executable, os.path.join(REPO, "bin/reproducibility.py"), f"--workdir={a}",
         f"--other={b}", "--features=pixel"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "K=16: RP 0.600" in out.stdout
    summary = json.load(open(os.path.join(a, "reproducibility", "summary.pixel.json")))
    assert set(summary) == {"16"}
