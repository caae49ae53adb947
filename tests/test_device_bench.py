"""bench/device.sh: the accelerator benchmark runs end to end on a CPU with --small and writes its
four files with consistent figures; the peak table and its override; a failing section still leaves
a file saying so."""
import importlib.util
import os
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "bench", "device.sh")


def _bench_device():
    spec = importlib.util.spec_from_file_location(
        "bench_device", os.path.join(REPO, "bench", "bench_device.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _read(path):
    header, fields = [], {}
    for line in open(path).read().splitlines():
        if line.startswith("#"):
            header.append(line)
        else:
            key, _, value = line.partition(": ")
            fields[key] = value
    return header, fields


def _env():
    return dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu"
    )


def test_peak_table_and_override():
    b = _bench_device()
    assert b.peak_tflops("NVIDIA H100 80GB HBM3", "bfloat16", {})[0] == 989.4
    assert b.peak_tflops("NVIDIA H100 80GB HBM3", "float32", {})[0] == 66.9
    assert b.peak_tflops("NVIDIA H100 PCIe", "bfloat16", {})[0] == 756.0   # not the SXM figure
    assert b.peak_tflops("NVIDIA A100-SXM4-40GB", "tensorfloat32", {})[0] == 156.0
    assert b.peak_tflops("NVIDIA H200", "bfloat16", {"bf16": 123.0}) == (123.0,
                                                                         "--peak_tflops_bf16")
    peak, why = b.peak_tflops("Some New Chip", "float32", {})
    assert peak is None and "--peak_tflops_fp32" in why


def test_failed_section_leaves_a_file(tmp_path):
    r = subprocess.run(["bash", SCRIPT, "--small", f"--out={tmp_path}", "--precisions=bogus"],
                       env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 1
    for section in ("train", "sample", "knn", "lpips"):
        header, fields = _read(tmp_path / f"gpu_{section}.txt")
        assert fields["status"] == "failed (exit status 2)"
        assert "did not finish" in header[0]


@pytest.mark.slow
def test_device_sh_small_on_cpu(tmp_path):
    r = subprocess.run(["bash", SCRIPT, "--small", f"--out={tmp_path}"], env=_env(),
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    files = {s: _read(tmp_path / f"gpu_{s}.txt") for s in ("train", "sample", "knn", "lpips")}
    for header, fields in files.values():
        text = "\n".join(header)
        assert "NO GPU: this ran on cpu" in text and "SMALL:" in text and "device: cpu" in text
        assert fields["status"] == "ok"
    _, t = files["train"]
    assert "DDPM++" in t["network"] and t["image_shape"] == "8x8x3"
    step, batch = float(t["float32_step_s"]), int(t["batch"])
    assert float(t["float32_images_per_s"]) == pytest.approx(batch / step, rel=0.01)
    assert float(t["float32_gflop_per_step"]) > 0
    mfu = float(t["float32_tflops"]) / float(t["float32_peak_tflops"])
    assert float(t["float32_mfu"]) == pytest.approx(mfu, rel=0.05, abs=2e-4)
    # no table peak for a CPU: said so
    assert "measured float32 jnp.dot" in t["float32_peak_source"]
    _, s = files["sample"]
    assert float(s["float32_images_per_s"]) == pytest.approx(
        int(s["batch"]) / float(s["float32_seconds_per_batch"]), rel=0.01
    )
    _, k = files["knn"]
    n, d = int(k["queries"]), int(k["features"])
    assert float(k["tflops"]) == pytest.approx(
        2 * n * n * d / float(k["seconds"]) / 1e12, rel=0.05, abs=1e-4
    )
    assert float(k["share_of_gemm"]) == pytest.approx(
        float(k["tflops"]) / float(k["gemm_tflops"]), rel=0.05, abs=1e-3
    )
    _, lp = files["lpips"]
    assert (
        int(lp["feature_dim"])
        == 64 * 32 * 32 + 128 * 16 * 16 + 256 * 8 * 8 + 512 * 4 * 4 + 512 * 2 * 2
    )
    assert float(lp["features_per_s"]) > 0
    assert lp["weights"].startswith(
        ("real LPIPS VGG16 weights", "RANDOM weights in VGG16's shapes")
    )


def test_random_vgg_weights_have_the_real_shapes():
    from diffmem.metrics import lpips
    w = _bench_device().random_vgg_weights()
    expected = lpips._expected_shapes("vgg16")["params"]
    assert {k: (v["kernel"].shape, v["bias"].shape) for k, v in w.variables["params"].items()} == \
        {k: (v["kernel"], v["bias"]) for k, v in expected.items()}
    assert [x.size for x in w.lin] == [64, 128, 256, 512, 512] and all(
        (x >= 0).all() for x in w.lin
    )
