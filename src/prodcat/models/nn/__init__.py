"""Shared neural parts: backbones, weights and photos (vision), the Lightning trainer and heads."""
