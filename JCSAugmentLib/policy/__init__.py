"""Augmentation policies: Gumbel-softmax sampling, TRA/TEA policies, initial policies,
meta-gradient normalisation and JSON files."""

from .categorical import CategoricalDraw, gumbel_noise, sample_categorical, straight_through
from .initial import (IDENTITY_PROBABILITY, TEA_POLICY_NAMES, TRA_POLICY_NAMES,
                      heuristic_tea_ops, make_tea_policy, make_tra_policy, tea_probabilities,
                      tra_probabilities)
from .normalise import (assign_gradients, gradient_normalisation, sampling_counts,
                        tea_logit_gradient, tra_logit_gradients)
from .policies import ClassSpecificTRAPolicy, TEAPolicy, TRADraw, TRAPolicy
from .policy_json import (PolicyFileError, load_policy, policy_from_dict, policy_to_dict,
                          save_policy, write_json_atomic)

__all__ = [
    "CategoricalDraw", "gumbel_noise", "sample_categorical", "straight_through",
    "IDENTITY_PROBABILITY", "TEA_POLICY_NAMES", "TRA_POLICY_NAMES", "heuristic_tea_ops",
    "make_tea_policy", "make_tra_policy", "tea_probabilities", "tra_probabilities",
    "assign_gradients", "gradient_normalisation", "sampling_counts", "tea_logit_gradient",
    "tra_logit_gradients", "ClassSpecificTRAPolicy", "TEAPolicy", "TRADraw", "TRAPolicy",
    "PolicyFileError", "load_policy", "policy_from_dict", "policy_to_dict", "save_policy",
    "write_json_atomic",
]
