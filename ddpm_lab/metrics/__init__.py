"""Metrics, plain PyTorch: feature extractors, FID/KID/IS, cached real-image features, and the NLL bound."""

from ddpm_lab.metrics.cache import cache_key, cached_features
from ddpm_lab.metrics.features import FeatureExtractor, InceptionFeatures, TinyFeatures, default_inception_path
from ddpm_lab.metrics.nll import NLLResult, images_bound
from ddpm_lab.metrics.scores import FeatureSet, as_rgb_uint8, chunks, extract_features, format_scores, scores

__all__ = [
    "FeatureExtractor",
    "FeatureSet",
    "InceptionFeatures",
    "NLLResult",
    "TinyFeatures",
    "as_rgb_uint8",
    "cache_key",
    "cached_features",
    "chunks",
    "default_inception_path",
    "extract_features",
    "format_scores",
    "images_bound",
    "scores",
]
