"""Metrics, plain PyTorch: feature extractors, FID/KID/IS, cached real-image features, scoring a checkpoint's
samples (and the class mix of a conditional one), and the NLL bound."""

from ddpm_lab.metrics.cache import cache_key, cached_features, real_features
from ddpm_lab.metrics.class_mix import class_counts, class_mix
from ddpm_lab.metrics.classifier import ClassifierFeatures, SmallCNN
from ddpm_lab.metrics.features import FeatureExtractor, InceptionFeatures, TinyFeatures, default_inception_path
from ddpm_lab.metrics.nll import NLLResult, NLLSettings, images_bound, model_bound
from ddpm_lab.metrics.sample_scores import (
    generate_uint8,
    per_class_lines,
    sample_and_score,
    score_images,
    score_line,
)
from ddpm_lab.metrics.scores import (
    FeatureSet,
    ScoreSettings,
    as_rgb_uint8,
    chunks,
    class_accuracy,
    extract_features,
    format_scores,
    random_subset,
    scores,
)

__all__ = [
    "ClassifierFeatures",
    "FeatureExtractor",
    "FeatureSet",
    "InceptionFeatures",
    "ScoreSettings",
    "SmallCNN",
    "NLLResult",
    "NLLSettings",
    "TinyFeatures",
    "as_rgb_uint8",
    "cache_key",
    "cached_features",
    "chunks",
    "class_accuracy",
    "class_counts",
    "class_mix",
    "default_inception_path",
    "extract_features",
    "format_scores",
    "generate_uint8",
    "images_bound",
    "model_bound",
    "per_class_lines",
    "random_subset",
    "real_features",
    "score_images",
    "score_line",
    "sample_and_score",
    "scores",
]
