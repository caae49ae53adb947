"""End-to-end studies that chain training, sampling, metrics, energies, figures and a report."""

__all__ = []
