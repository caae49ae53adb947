"""Flax Linen score and denoiser networks (explicit fields, pure init/apply)."""
from diffmem.nets.embeddings import FourierEmbedding, SinusoidalEmbedding
from diffmem.nets.mlp import ScoreMLP

__all__ = ["FourierEmbedding", "SinusoidalEmbedding", "ScoreMLP"]
