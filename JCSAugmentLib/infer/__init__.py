"""Inference: sliding-window prediction with test-time augmentation."""
