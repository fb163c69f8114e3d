"""Segmentation: customer aggregates (R, F, M), levels, tiers, classes, lifecycle tags, audiences."""
