"""The augmentation engine: operation registry and tables, TRA cascade, TEA operations and their
inverses.

Public API::

    from JCSAugmentLib.augment import OPS, TRA_GROUPS, TEA_OPS, tea_transform, tea_invert
    from JCSAugmentLib.augment import sample_tra_params, apply_tra, required_crop_size, CaseStats
"""

from .ops import OPS
from .stats import CaseStats
from .tables import (TEA_INDEX, TEA_MIRROR_OPS_DEEPMEDIC, TEA_MIRROR_OPS_NNUNET, TEA_OPS,
                     TRA_GROUP_INDEX, TRA_GROUPS, TEAOp, TRAGroup, TRAOption, table_rows)
from .tea import tea_invert, tea_matrix, tea_transform
from .tra import (TRAParams, apply_tra, augment_patches, max_crop_size, required_crop_size,
                  sample_tra_params)

__all__ = [
    "CaseStats", "OPS", "TEA_INDEX", "TEA_MIRROR_OPS_DEEPMEDIC", "TEA_MIRROR_OPS_NNUNET",
    "TEA_OPS", "TRA_GROUP_INDEX", "TRA_GROUPS", "TEAOp", "TRAGroup", "TRAOption", "table_rows",
    "tea_invert", "tea_matrix", "tea_transform", "TRAParams", "apply_tra", "augment_patches",
    "max_crop_size", "required_crop_size", "sample_tra_params",
]
