"""Data sources: toy distributions (toy, synthetic, molrg), image datasets (images, image_formats)
and K-subsets (subsets). Import the module you need; nothing is loaded here."""

__all__ = []
