"""The model registry: base versions, variants and their lineage over a metadata DB + blob store."""

from tinymlops.registry.blobs import BlobStore, LocalBlobStore, sha256_hex
from tinymlops.registry.records import (
    ArtifactRecord,
    DatasetRecord,
    DerivationRecord,
    EvaluationRecord,
    LineageNode,
    ModelSummary,
)
from tinymlops.registry.refs import ModelRef, format_ref, parse_ref
from tinymlops.registry.store import Registry

__all__ = [
    "ArtifactRecord",
    "BlobStore",
    "DatasetRecord",
    "DerivationRecord",
    "EvaluationRecord",
    "LineageNode",
    "LocalBlobStore",
    "ModelRef",
    "ModelSummary",
    "Registry",
    "format_ref",
    "parse_ref",
    "sha256_hex",
]
