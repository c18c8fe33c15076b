"""Metrics, plain PyTorch: feature extractors, FID/KID/IS, cached real-image features, and the NLL bound."""

from ddpm_lab.metrics.cache import cache_key, cached_features
from ddpm_lab.metrics.classifier import ClassifierFeatures, SmallCNN
from ddpm_lab.metrics.features import FeatureExtractor, InceptionFeatures, TinyFeatures, default_inception_path
from ddpm_lab.metrics.nll import NLLResult, images_bound
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
    "NLLResult",
    "TinyFeatures",
    "as_rgb_uint8",
    "cache_key",
    "cached_features",
    "chunks",
    "class_accuracy",
    "default_inception_path",
    "extract_features",
    "format_scores",
    "images_bound",
    "scores",
]
