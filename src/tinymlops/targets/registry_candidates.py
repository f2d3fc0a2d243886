"""Selection candidates from the registry: every variant of a base version with its measured
numbers (the newest evaluation on this host)."""

from __future__ import annotations

from tinymlops.registry.records import ArtifactRecord
from tinymlops.registry.store import Registry
from tinymlops.targets.selection import Candidate


def candidates_for(registry: Registry, ref: str) -> tuple[ArtifactRecord, list[Candidate]]:
    """The base version ``ref`` names (latest by default) and a candidate per artifact of it."""
    named = registry.resolve(ref)
    artifacts = registry.artifacts(named.model, named.version)
    base = next(a for a in artifacts if a.is_base)
    evals = registry.evaluations(a.id for a in artifacts)
    out = []
    for a in artifacts:
        m = evals[a.id][-1].metrics if evals.get(a.id) else {}
        if "error" in m:
            continue  # a variant that failed to run on the host is not a candidate
        out.append(
            Candidate(
                ref=a.ref,
                info=a.info,
                size_bytes=a.size_bytes,
                accuracy=m.get("accuracy"),
                agreement=1.0 if a.is_base and m else m.get("agreement"),
                latency_ms=m.get("latency_ms_p50"),
                peak_memory_bytes=m.get("peak_memory_bytes"),
            )
        )
    return base, out
