"""The registration flow: register a base version, derive its variants, evaluate them all."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from tinymlops.optimize.derivation import DerivationOutcome, derive_variants
from tinymlops.optimize.evaluation import evaluate
from tinymlops.registry.blobs import sha256_hex
from tinymlops.registry.datasets import check_matches, parse_npz
from tinymlops.registry.inspect import inspect_model
from tinymlops.registry.records import ArtifactRecord
from tinymlops.workspace.workspace import Workspace


@dataclass
class RegistrationResult:
    base: ArtifactRecord
    derivations: list[DerivationOutcome] = field(default_factory=list)
    evaluations: dict[int, dict[str, Any]] = field(default_factory=dict)
    #: the drift reference profile computed from the dataset (None: the model has no dataset)
    reference: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "base": self.base.to_dict(),
            "derivations": [d.to_dict() for d in self.derivations],
            "evaluations": {str(k): v for k, v in self.evaluations.items()},
            "reference": self.reference,
        }


def register_model(
    ws: Workspace,
    name: str,
    data: bytes,
    *,
    source: str = "",
    tags: Iterable[str] = (),
    description: str = "",
    dataset: bytes | None = None,
    dataset_name: str = "eval",
    calibration: bytes | None = None,
    derive: bool = True,
    run_evaluation: bool = True,
    progress: Callable[[str], None] | None = None,
) -> RegistrationResult:
    """Register ``data`` as a new base version; derive the configured variants; evaluate them.

    Bad input (a corrupt model, a dataset that does not fit it) is refused before anything is
    written. A failing recipe is recorded and does not stop the others.
    """
    say = progress or (lambda _msg: None)
    datasets = [
        (n, role, blob)
        for n, role, blob in ((dataset_name, "eval", dataset), ("calibration", "calibration", calibration))
        if blob is not None
    ]
    if datasets:
        info = inspect_model(data)
        for ds_name, _, blob in datasets:
            check_matches(parse_npz(blob, f"dataset '{ds_name}'"), info, f"dataset '{ds_name}'")
    base = ws.registry.register(name, data, source=source, tags=tags, description=description)
    say(f"registered {base.ref} ({base.format}, {base.size_bytes} bytes)")
    existing = {d.sha256 for d in ws.registry.datasets(name)}
    for ds_name, role, blob in datasets:
        if sha256_hex(blob) not in existing:
            ws.registry.add_dataset(name, f"{ds_name}-v{base.version}", blob, role=role)
    result = RegistrationResult(base)
    result.reference = compute_reference(ws, base, [blob for _, _, blob in datasets], say)
    if derive:
        result.derivations = derive_variants(
            ws.registry, ws.config, base, on_step=lambda path, status: say(f"  {path}: {status}")
        )
    if run_evaluation:
        variants = [d.artifact for d in result.derivations if d.artifact is not None]
        result.evaluations = evaluate(
            ws.registry,
            base,
            variants,
            ws.config.evaluation,
            on_done=lambda a, m: say(f"  evaluated {a.ref}"),
        )
    return result


def compute_reference(
    ws: Workspace, base: ArtifactRecord, given: list[bytes], say: Callable[[str], None]
) -> dict[str, Any] | None:
    """The drift reference profile of a newly registered base version
    (:class:`~tinymlops.observe.references.ReferenceService`): from the dataset given with it (eval
    first, then calibration), else the model's registered ones; None when the model has no dataset.
    Registration never fails on it: a failure is reported in the result."""
    from tinymlops.observe.references import ReferenceService

    service = ReferenceService(ws.engine, ws.registry)
    attempt = service.try_build(base.model, base.version, given=[sha256_hex(blob) for blob in given])
    if attempt is None:
        say("  no dataset: no drift reference profile (add one with `tinymlops dataset add`)")
        return None
    record = attempt.record
    if record is None:
        say(f"  drift reference profile failed: {attempt.error}")
        return {"status": "failed", "error": attempt.error}
    say(f"  drift reference profile from dataset '{record.dataset}' ({record.rows} rows)")
    outputs = record.settings.get("outputs")
    return {"status": "built", "dataset": record.dataset, "rows": record.rows, "outputs": outputs}
