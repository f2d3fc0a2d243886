"""Targets: the device profile catalog, the compatibility check, and variant selection.

* :class:`TargetCatalog` - built-in profiles (``targets/profiles/*.toml``) plus a workspace's
  ``targets/*.toml``; user profiles override built-ins of the same name.
* :func:`check_compatibility` - can this model file run on that class of device, and why not.
* :func:`select_variant` - the best compatible variant for a device at one moment, explained.
* :func:`load_table` - ONNX Runtime's own NNAPI / CoreML operator support tables.
"""

from tinymlops.targets.catalog import TargetCatalog, builtin_profiles, load_profile_file
from tinymlops.targets.compat import (
    FORMAT_BACKENDS,
    ISSUE_KINDS,
    CompatIssue,
    CompatReport,
    check_compatibility,
)
from tinymlops.targets.ort_tables import TABLE_FILES, OperatorTable, canonical_op, load_table
from tinymlops.targets.selection import (
    PREFERENCE_WEIGHTS,
    Candidate,
    Selection,
    select_variant,
    selection_weights,
)

__all__ = [
    "FORMAT_BACKENDS",
    "ISSUE_KINDS",
    "PREFERENCE_WEIGHTS",
    "TABLE_FILES",
    "Candidate",
    "CompatIssue",
    "CompatReport",
    "OperatorTable",
    "Selection",
    "TargetCatalog",
    "builtin_profiles",
    "canonical_op",
    "check_compatibility",
    "load_profile_file",
    "load_table",
    "select_variant",
    "selection_weights",
]
