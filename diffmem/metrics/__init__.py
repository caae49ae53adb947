"""Metrics of samples, denoisers and training sets; each module one measurement:

    neighbours        exact unsquared L2 nearest neighbours (`nearest`, `most_similar`): the one
                      implementation every metric and study uses
    distances         the tiled GEMM k-NN engine behind it (squared distances, any feature space)
    lpips             LPIPS (AlexNet / VGG16) as a feature map, so LPIPS k-NN is a GEMM
    classify          Pham et al.'s memorized / spurious / generalized labels
    memorization      Gu et al.'s memorization ratio and effective model memorization (EMM)
    calibration       class thresholds calibrated from held-out real data
    reproducibility   Zhang et al.'s reproducibility (RP) and generalization scores
    critical_time     critical times and basins of attraction (Pham et al.)
    phase_times       speciation and collapse times from the training data (Biroli et al.)
    jacobian          denoiser Jacobians and their rank (Zhang et al.)
    adaptive_basis    geometry-adaptive harmonic bases of the denoiser Jacobian (Kadkhodaie et al.)
    pickle_arrays     a restricted reader of pickled numpy arrays (third-party weights)

Import the module you need (`from diffmem.metrics import neighbours`); nothing is loaded here.
"""

__all__ = []
