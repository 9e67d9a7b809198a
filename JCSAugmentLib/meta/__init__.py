"""Meta-learning of the augmentation policies: meta-gradients and the TEA policy step."""

from .metagrad import METHODS, MetaStep, frozen_running_stats, meta_gradient

__all__ = ["METHODS", "MetaStep", "frozen_running_stats", "meta_gradient"]
