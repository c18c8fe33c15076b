"""Sample-quality metrics, plain PyTorch: feature extractors, FID/KID/IS, and cached real-image features."""

from ddpm_lab.metrics.cache import cache_key, cached_features
from ddpm_lab.metrics.classifier import ClassifierFeatures, SmallCNN
from ddpm_lab.metrics.features import FeatureExtractor, InceptionFeatures, TinyFeatures, default_inception_path
from ddpm_lab.metrics.scores import (
    FeatureSet,
    as_rgb_uint8,
    chunks,
    class_accuracy,
    extract_features,
    format_scores,
    scores,
)

__all__ = [
    "ClassifierFeatures",
    "FeatureExtractor",
    "FeatureSet",
    "InceptionFeatures",
    "SmallCNN",
    "TinyFeatures",
    "as_rgb_uint8",
    "cache_key",
    "cached_features",
    "chunks",
    "class_accuracy",
    "default_inception_path",
    "extract_features",
    "format_scores",
    "scores",
]
