"""Sample-quality metrics, plain PyTorch: feature extractors, FID/KID/IS, and cached real-image features."""

from ddpm_lab.metrics.cache import cache_key, cached_features
from ddpm_lab.metrics.features import FeatureExtractor, InceptionFeatures, TinyFeatures, default_inception_path
from ddpm_lab.metrics.scores import FeatureSet, as_rgb_uint8, chunks, extract_features, format_scores, scores

__all__ = [
    "FeatureExtractor",
    "FeatureSet",
    "InceptionFeatures",
    "TinyFeatures",
    "as_rgb_uint8",
    "cache_key",
    "cached_features",
    "chunks",
    "default_inception_path",
    "extract_features",
    "format_scores",
    "scores",
]
