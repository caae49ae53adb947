"""Flax Linen score and denoiser networks (explicit fields, pure init/apply)."""
from diffmem.nets.bfcnn import BFCNN, BFUNet, BFBatchNorm
from diffmem.nets.embeddings import FourierEmbedding, SinusoidalEmbedding
from diffmem.nets.mlp import ScoreMLP
from diffmem.nets.songunet import SongUNet, encoder_skip_resolutions
from diffmem.nets.unet import DDPMUNet, count_params

__all__ = ["BFBatchNorm", "BFCNN", "BFUNet", "DDPMUNet", "FourierEmbedding", "SinusoidalEmbedding",
           "ScoreMLP", "SongUNet", "count_params", "encoder_skip_resolutions"]
