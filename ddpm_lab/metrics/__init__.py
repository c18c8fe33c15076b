"""Metrics, plain PyTorch: feature extractors, FID/KID/IS (FID's spread and the real-vs-real floor), cached
real-image features, published reference statistics, scoring a checkpoint's samples (and the class mix of a
conditional one), and the NLL bound."""

from ddpm_lab.metrics.cache import cache_key, cached_features, read_cached, real_features, write_cached
from ddpm_lab.metrics.class_mix import class_counts, class_mix
from ddpm_lab.metrics.classifier import ClassifierFeatures, SmallCNN
from ddpm_lab.metrics.features import FeatureExtractor, InceptionFeatures, TinyFeatures, default_inception_path
from ddpm_lab.metrics.nll import NLLResult, NLLSettings, images_bound, model_bound
from ddpm_lab.metrics.reference_stats import read_reference_stats
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
    Statistics,
    as_rgb_uint8,
    chunks,
    class_accuracy,
    extract_features,
    fid_spread,
    format_floor,
    format_scores,
    frechet_distance,
    gather_features,
    random_subset,
    real_floor,
    scores,
    statistics,
)

__all__ = [
    "ClassifierFeatures",
    "FeatureExtractor",
    "FeatureSet",
    "InceptionFeatures",
    "ScoreSettings",
    "Statistics",
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
    "fid_spread",
    "format_floor",
    "format_scores",
    "frechet_distance",
    "gather_features",
    "generate_uint8",
    "images_bound",
    "model_bound",
    "per_class_lines",
    "random_subset",
    "read_cached",
    "read_reference_stats",
    "real_features",
    "real_floor",
    "score_images",
    "score_line",
    "sample_and_score",
    "scores",
    "statistics",
    "write_cached",
]
