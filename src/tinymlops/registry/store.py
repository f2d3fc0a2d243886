"""The registry service: models, base versions, variants, derivations, datasets, evaluations.

Write order keeps the registry consistent under any failure: blobs are written first
(content-addressed, atomic), then the metadata rows in one transaction. A crash between the
two leaves at most an unreferenced blob (``Registry.collect_garbage`` removes it), never a
row pointing at a missing blob, never half a variant.
"""

from __future__ import annotations

import functools
import gc
import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Engine, String, Text, cast, func, select, type_coerce
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from tinymlops.errors import ModelNotFoundError, NotFoundError, StoreError, UsageError
from tinymlops.registry.blobs import BlobStore
from tinymlops.registry.datasets import ROLES, Dataset, check_matches, parse_npz
from tinymlops.registry.db import session_factory
from tinymlops.registry.inspect import inspect_model
from tinymlops.registry.records import (
    ArtifactRecord,
    DatasetRecord,
    DerivationRecord,
    EvaluationRecord,
    JsonBatch,
    LineageNode,
    ListedArtifactRecord,
    ModelSummary,
)
from tinymlops.registry.refs import NAME, SEGMENT, ModelRef, parse_ref
from tinymlops.registry.schema import ArtifactRow, DatasetRow, DerivationRow, EvaluationRow, ModelRow
from tinymlops.spec.model_info import ModelInfo
from tinymlops.spec.recipe import RecipeSpec

_ARTIFACT_COLUMNS = (
    ArtifactRow.id,
    ModelRow.name,
    ArtifactRow.version,
    ArtifactRow.variant,
    ArtifactRow.parent_id,
    ArtifactRow.format,
    ArtifactRow.sha256,
    ArtifactRow.size_bytes,
    cast(ArtifactRow.info, Text),
    cast(ArtifactRow.recipe, Text),
    ArtifactRow.target,
    ArtifactRow.source,
    cast(ArtifactRow.tags, Text),
    # raw driver value: SQLite's text parsed by fromisoformat (C), PostgreSQL's datetime as is
    type_coerce(ArtifactRow.created_at, String),
)


#: a listing leaves the JSON out (see JsonBatch)
_LISTED_COLUMNS = tuple(c for i, c in enumerate(_ARTIFACT_COLUMNS) if i not in (8, 9))

_DERIVATION_COLUMNS = (
    DerivationRow.id,
    DerivationRow.version,
    DerivationRow.variant,
    DerivationRow.parent_id,
    DerivationRow.recipe,
    DerivationRow.status,
    DerivationRow.error,
    DerivationRow.details,
    DerivationRow.artifact_id,
    DerivationRow.duration_s,
)


_F = TypeVar("_F", bound=Callable[..., Any])


def _gc_paused(method: _F) -> _F:
    """Pause the cyclic garbage collector while ``method`` builds thousands of records.

    They form no reference cycles, but allocating them triggers collections that traverse the
    whole heap — in a process holding a big one (a server, a notebook with torch loaded) that
    turned a 110 ms listing of 10,000 variants into 400 ms one call in three. Reference counting
    still frees everything; the collector catches up at its next trigger. If someone else turned
    the collector off, it stays off."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not gc.isenabled():
            return method(*args, **kwargs)
        gc.disable()
        try:
            return method(*args, **kwargs)
        finally:
            gc.enable()

    return wrapper  # type: ignore[return-value]


def _timestamp(value: Any) -> datetime:
    return datetime.fromisoformat(value) if isinstance(value, str) else value


def _artifact(row: Sequence[Any], tags_cache: dict[str | None, tuple[str, ...]] | None = None) -> ArtifactRecord:
    """A record from one ``_ARTIFACT_COLUMNS`` row. Listing thousands of variants repeats the
    same few tag lists: ``tags_cache`` decodes each distinct one once."""
    cache = {} if tags_cache is None else tags_cache
    tags_text = row[12]
    tags = cache.get(tags_text)
    if tags is None:
        tags = cache[tags_text] = tuple(json.loads(tags_text)) if tags_text else ()
    return ArtifactRecord.from_values(
        row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8], row[9], row[10], row[11], tags,
        _timestamp(row[13]),
    )  # fmt: skip


def _listed(row: Sequence[Any], batch: JsonBatch, tags_cache: dict[str | None, tuple[str, ...]]) -> ArtifactRecord:
    """A record from one ``_LISTED_COLUMNS`` row; its JSON comes from ``batch`` when read."""
    tags_text = row[10]
    tags = tags_cache.get(tags_text)
    if tags is None:
        tags = tags_cache[tags_text] = tuple(json.loads(tags_text)) if tags_text else ()
    return ListedArtifactRecord.listed(
        batch, row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8], row[9], tags,
        _timestamp(row[11]),
    )  # fmt: skip


def _derivation(row: DerivationRow, model: str) -> DerivationRecord:
    return DerivationRecord(
        id=row.id,
        model=model,
        version=row.version,
        variant=row.variant,
        parent_id=row.parent_id,
        recipe=row.recipe,
        status=row.status,
        error=row.error,
        details=row.details or {},
        artifact_id=row.artifact_id,
        duration_s=row.duration_s,
    )


def _dataset(row: DatasetRow, model: str) -> DatasetRecord:
    return DatasetRecord(
        id=row.id,
        model=model,
        name=row.name,
        role=row.role,
        sha256=row.sha256,
        size_bytes=row.size_bytes,
        n_samples=row.n_samples,
        x_shape=tuple(row.x_shape),
        x_dtype=row.x_dtype,
        has_labels=bool(row.has_labels),
    )


class Registry:
    """Models and their lineage, over one metadata database and one blob store."""

    def __init__(self, engine: Engine, blobs: BlobStore) -> None:
        self.engine = engine
        self.blobs = blobs
        self._sessions = session_factory(engine)

    # --- helpers ---------------------------------------------------------------------------
    def _session(self) -> Session:
        return self._sessions()

    @staticmethod
    def _model_id(session: Session, name: str) -> int:
        model_id = session.scalar(select(ModelRow.id).where(ModelRow.name == name))
        if model_id is None:
            raise ModelNotFoundError(f"no model named '{name}' in this workspace", model=name)
        return model_id

    # --- registering -----------------------------------------------------------------------
    def register(
        self,
        name: str,
        data: bytes,
        *,
        source: str = "",
        tags: Iterable[str] = (),
        description: str = "",
    ) -> ArtifactRecord:
        """Register ``data`` (ONNX or TFLite bytes) as the next base version of ``name``."""
        if not NAME.match(name):
            raise UsageError(f"bad model name {name!r}: use letters, digits, '.', '_' and '-' (max 128)")
        info = inspect_model(data)  # raises InvalidModelError before anything is written
        digest = self.blobs.put(data)
        for attempt in range(3):
            with self._session() as session:
                try:
                    model = session.scalar(select(ModelRow).where(ModelRow.name == name))
                    if model is None:
                        model = ModelRow(name=name, description=description)
                        session.add(model)
                        session.flush()
                    elif description:
                        model.description = description
                    latest = session.scalar(
                        select(func.max(ArtifactRow.version)).where(ArtifactRow.model_id == model.id)
                    )
                    row = ArtifactRow(
                        model_id=model.id,
                        version=(latest or 0) + 1,
                        variant="",
                        parent_id=None,
                        format=info.format,
                        sha256=digest,
                        size_bytes=len(data),
                        info=info.to_dict(),
                        recipe=None,
                        target=None,
                        source=source,
                        tags=sorted(set(tags)),
                    )
                    session.add(row)
                    session.commit()
                    return self.get(row.id)
                except IntegrityError:
                    # a concurrent registration took the same version number: retry
                    session.rollback()
                    if attempt == 2:
                        raise StoreError(f"could not allocate a new version of '{name}' (concurrent writers)") from None
        raise AssertionError("unreachable")

    def add_variant(
        self,
        parent: ArtifactRecord,
        data: bytes,
        info: ModelInfo,
        recipe: RecipeSpec,
        *,
        variant: str,
        details: dict[str, Any] | None = None,
        duration_s: float = 0.0,
        tags: Iterable[str] = (),
    ) -> ArtifactRecord:
        """Record a derived variant and its successful derivation in one transaction."""
        for segment in variant.split("/"):
            if not SEGMENT.match(segment):
                raise UsageError(f"bad variant name {variant!r}")
        digest = self.blobs.put(data)
        with self._session() as session:
            model_id = self._model_id(session, parent.model)
            row = ArtifactRow(
                model_id=model_id,
                version=parent.version,
                variant=variant,
                parent_id=parent.id,
                format=info.format,
                sha256=digest,
                size_bytes=len(data),
                info=info.to_dict(),
                recipe=recipe.to_dict(),
                target=recipe.target,
                source=f"derived from {parent.ref} by {recipe.recipe}",
                tags=sorted(set(tags)),
            )
            session.add(row)
            try:
                session.flush()
            except IntegrityError:
                session.rollback()
                raise UsageError(f"variant {parent.model}:{parent.version}/{variant} already exists") from None
            session.add(
                DerivationRow(
                    model_id=model_id,
                    version=parent.version,
                    parent_id=parent.id,
                    variant=variant,
                    recipe=recipe.to_dict(),
                    status="succeeded",
                    error="",
                    details=details or {},
                    artifact_id=row.id,
                    duration_s=duration_s,
                )
            )
            session.commit()
            return self.get(row.id)

    def record_failed_derivation(
        self,
        parent: ArtifactRecord,
        variant: str,
        recipe: dict[str, Any],
        error: str,
        *,
        status: str = "failed",
        details: dict[str, Any] | None = None,
        duration_s: float = 0.0,
    ) -> DerivationRecord:
        with self._session() as session:
            model_id = self._model_id(session, parent.model)
            row = DerivationRow(
                model_id=model_id,
                version=parent.version,
                parent_id=parent.id,
                variant=variant,
                recipe=recipe,
                status=status,
                error=error,
                details=details or {},
                artifact_id=None,
                duration_s=duration_s,
            )
            session.add(row)
            session.commit()
            return _derivation(row, parent.model)

    def set_tags(self, ref: str, tags: Iterable[str]) -> ArtifactRecord:
        record = self.resolve(ref)
        with self._session() as session:
            row = session.get(ArtifactRow, record.id)
            assert row is not None
            row.tags = sorted(set(tags))
            session.commit()
        return self.get(record.id)

    # --- reading ---------------------------------------------------------------------------
    def get(self, artifact_id: int) -> ArtifactRecord:
        with self.engine.connect() as conn:
            row = conn.execute(select(*_ARTIFACT_COLUMNS).join(ModelRow).where(ArtifactRow.id == artifact_id)).first()
        if row is None:
            raise ModelNotFoundError(f"no artifact with id {artifact_id}")
        return _artifact(row)

    def resolve(self, ref: str | ModelRef) -> ArtifactRecord:
        """Find the artifact a reference names (latest version when none is given)."""
        parsed = parse_ref(ref) if isinstance(ref, str) else ref
        with self.engine.connect() as conn:
            model_id = conn.scalar(select(ModelRow.id).where(ModelRow.name == parsed.name))
            if model_id is None:
                raise ModelNotFoundError(f"no model named '{parsed.name}' in this workspace", model=parsed.name)
            version = parsed.version
            if version is None:
                version = conn.scalar(select(func.max(ArtifactRow.version)).where(ArtifactRow.model_id == model_id))
            row = conn.execute(
                select(*_ARTIFACT_COLUMNS)
                .join(ModelRow)
                .where(
                    ArtifactRow.model_id == model_id,
                    ArtifactRow.version == version,
                    ArtifactRow.variant == parsed.variant,
                )
            ).first()
            if row is None:
                versions = conn.scalars(
                    select(ArtifactRow.version).where(ArtifactRow.model_id == model_id, ArtifactRow.variant == "")
                ).all()
                if version not in versions:
                    raise ModelNotFoundError(
                        f"model '{parsed.name}' has no version {version} (versions: "
                        f"{', '.join(map(str, sorted(versions))) or 'none'})",
                        ref=str(parsed),
                    )
                failed = conn.scalar(
                    select(DerivationRow.error).where(
                        DerivationRow.model_id == model_id,
                        DerivationRow.version == version,
                        DerivationRow.variant == parsed.variant,
                    )
                )
                hint = f" (its recipe failed: {failed})" if failed else ""
                raise ModelNotFoundError(
                    f"model '{parsed.name}' version {version} has no variant '{parsed.variant}'{hint}",
                    ref=str(parsed),
                )
        return _artifact(row)

    def read_bytes(self, record: ArtifactRecord) -> bytes:
        return self.blobs.get(record.sha256)

    def list_models(self) -> list[ModelSummary]:
        with self.engine.connect() as conn:
            models = conn.execute(
                select(ModelRow.id, ModelRow.name, ModelRow.description).order_by(ModelRow.name)
            ).all()
            stats = {
                r[0]: r
                for r in conn.execute(
                    select(
                        ArtifactRow.model_id,
                        func.count().filter(ArtifactRow.variant == ""),
                        func.max(ArtifactRow.version),
                        func.count().filter(ArtifactRow.variant != ""),
                    ).group_by(ArtifactRow.model_id)
                ).all()
            }
            failed = dict(
                conn.execute(
                    select(DerivationRow.model_id, func.count())
                    .where(DerivationRow.status == "failed")
                    .group_by(DerivationRow.model_id)
                ).all()
            )
            formats: dict[int, set[str]] = defaultdict(set)
            for model_id, fmt in conn.execute(select(ArtifactRow.model_id, ArtifactRow.format).distinct()).all():
                formats[model_id].add(fmt)
        out = []
        for model_id, name, description in models:
            s = stats.get(model_id, (model_id, 0, 0, 0))
            out.append(
                ModelSummary(
                    name=name,
                    description=description,
                    versions=s[1],
                    latest_version=s[2] or 0,
                    variants=s[3],
                    failed_derivations=failed.get(model_id, 0),
                    formats=tuple(sorted(formats[model_id])),
                )
            )
        return out

    @_gc_paused
    def artifacts(self, name: str, version: int | None = None) -> list[ArtifactRecord]:
        """Every artifact of a model (optionally one version), base versions first.

        The records' info and recipe JSON are fetched for the whole listing in one query the
        first time any record's ``info``/``recipe`` is read."""
        with self.engine.connect() as conn:
            model_id = conn.scalar(select(ModelRow.id).where(ModelRow.name == name))
            if model_id is None:
                raise ModelNotFoundError(f"no model named '{name}' in this workspace", model=name)
            where = [ArtifactRow.model_id == model_id]
            if version is not None:
                where.append(ArtifactRow.version == version)
            rows = conn.execute(select(*_LISTED_COLUMNS).join(ModelRow).where(*where)).all()

        def fetch() -> dict[int, tuple[str, str | None]]:
            q = select(ArtifactRow.id, cast(ArtifactRow.info, Text), cast(ArtifactRow.recipe, Text)).where(*where)
            with self.engine.connect() as conn:
                return {aid: (info, recipe) for aid, info, recipe in conn.execute(q)}

        batch = JsonBatch(fetch)
        cache: dict[str | None, tuple[str, ...]] = {}
        return [_listed(r, batch, cache) for r in rows]

    def derivations(self, name: str, version: int | None = None) -> list[DerivationRecord]:
        with self.engine.connect() as conn:
            model_id = conn.scalar(select(ModelRow.id).where(ModelRow.name == name))
            if model_id is None:
                raise ModelNotFoundError(f"no model named '{name}' in this workspace", model=name)
            q = select(*_DERIVATION_COLUMNS).where(DerivationRow.model_id == model_id)
            if version is not None:
                q = q.where(DerivationRow.version == version)
            rows = conn.execute(q.order_by(DerivationRow.id)).all()
        return [DerivationRecord(r[0], name, *r[1:]) for r in rows]

    def evaluations(self, artifact_ids: Iterable[int]) -> dict[int, list[EvaluationRecord]]:
        ids = list(artifact_ids)
        out: dict[int, list[EvaluationRecord]] = defaultdict(list)
        if not ids:
            return out
        with self.engine.connect() as conn:
            for chunk_start in range(0, len(ids), 900):
                chunk = ids[chunk_start : chunk_start + 900]
                rows = conn.execute(
                    select(
                        EvaluationRow.artifact_id,
                        EvaluationRow.dataset,
                        EvaluationRow.host,
                        EvaluationRow.metrics,
                        EvaluationRow.created_at,
                    )
                    .where(EvaluationRow.artifact_id.in_(chunk))
                    .order_by(EvaluationRow.id)
                ).all()
                for r in rows:
                    out[r[0]].append(EvaluationRecord(r[0], r[1], r[2], r[3], r[4]))
        return out

    def latest_evaluation(self, artifact_id: int) -> EvaluationRecord | None:
        evs = self.evaluations([artifact_id]).get(artifact_id)
        return evs[-1] if evs else None

    def add_evaluation(self, artifact_id: int, dataset: str, host: str, metrics: dict[str, Any]) -> EvaluationRecord:
        with self._session() as session:
            row = EvaluationRow(artifact_id=artifact_id, dataset=dataset, host=host, metrics=metrics)
            session.add(row)
            session.commit()
            return EvaluationRecord(row.artifact_id, row.dataset, row.host, row.metrics, row.created_at)

    @_gc_paused
    def lineage(self, name: str, version: int | None = None) -> list[LineageNode]:
        """The lineage forest of a model: one tree per base version, variants below their
        parents, derivations that produced nothing as leaves with their error.

        Two queries (artifacts joined to their newest evaluation, and the unsuccessful
        derivations); JSON stays undecoded text until a node's numbers are read, so a model
        with 10,000 variants stays interactive."""
        with self.engine.connect() as conn:
            model_id = conn.scalar(select(ModelRow.id).where(ModelRow.name == name))
            if model_id is None:
                raise ModelNotFoundError(f"no model named '{name}' in this workspace", model=name)
            ev = aliased(EvaluationRow)
            newest = (
                select(func.max(ev.id)).where(ev.artifact_id == ArtifactRow.id).correlate(ArtifactRow).scalar_subquery()
            )
            q = (
                select(
                    ArtifactRow.id,
                    ArtifactRow.version,
                    ArtifactRow.variant,
                    ArtifactRow.parent_id,
                    ArtifactRow.format,
                    ArtifactRow.size_bytes,
                    ArtifactRow.target,
                    cast(ArtifactRow.recipe, Text),
                    cast(EvaluationRow.metrics, Text),
                )
                .outerjoin(EvaluationRow, EvaluationRow.id == newest)
                .where(ArtifactRow.model_id == model_id)
            )
            dq = select(
                DerivationRow.version,
                DerivationRow.variant,
                DerivationRow.parent_id,
                DerivationRow.recipe,
                DerivationRow.status,
                DerivationRow.error,
                DerivationRow.details,
            ).where(DerivationRow.model_id == model_id, DerivationRow.status != "succeeded")
            if version is not None:
                q = q.where(ArtifactRow.version == version)
                dq = dq.where(DerivationRow.version == version)
            rows = conn.execute(q).all()
            failures = conn.execute(dq.order_by(DerivationRow.id)).all()

        nodes: dict[int, LineageNode] = {}
        kids: dict[int | None, list[LineageNode]] = defaultdict(list)
        for aid, ver, variant, parent, fmt, size, target, recipe, metrics in rows:
            ref = f"{name}:{ver}/{variant}" if variant else f"{name}:{ver}"
            node = nodes[aid] = LineageNode(ref, "ready", aid, parent, fmt, size, target, recipe, metrics)
            kids[parent].append(node)  # ids grow with insertion: siblings stay in derivation order
        # the newest unsuccessful attempt per variant that never succeeded, under its parent
        if failures:
            present = {n.ref for n in nodes.values()}
            latest: dict[str, Any] = {}
            for f in failures:
                ref = f"{name}:{f[0]}/{f[1]}"
                if ref not in present:
                    latest[ref] = f
            for ref, f in sorted(latest.items()):
                if f[2] in nodes:
                    kids[f[2]].append(
                        LineageNode(ref, f[4], None, f[2], None, None, None, json.dumps(f[3]), None, f[5], f[6] or {})
                    )
        for parent_id, children in kids.items():
            if parent_id is not None and parent_id in nodes:
                nodes[parent_id].children = tuple(children)
        roots = kids.get(None, [])
        return roots

    # --- datasets --------------------------------------------------------------------------
    def add_dataset(self, model: str, name: str, data: bytes, *, role: str = "eval") -> DatasetRecord:
        if role not in ROLES:
            raise UsageError(f"dataset role must be one of {', '.join(ROLES)}, got {role!r}")
        if not SEGMENT.match(name):
            raise UsageError(f"bad dataset name {name!r}: lowercase letters, digits, '-', '_', '.'")
        base = self.resolve(model)
        dataset = parse_npz(data, f"dataset '{name}'")
        check_matches(dataset, base.info, f"dataset '{name}' for model '{model}'")
        digest = self.blobs.put(data)
        with self._session() as session:
            model_id = self._model_id(session, model)
            existing = session.scalar(
                select(DatasetRow).where(DatasetRow.model_id == model_id, DatasetRow.name == name)
            )
            if existing is not None:
                raise UsageError(f"model '{model}' already has a dataset named '{name}'")
            row = DatasetRow(
                model_id=model_id,
                name=name,
                role=role,
                sha256=digest,
                size_bytes=len(data),
                n_samples=dataset.n,
                x_shape=list(dataset.x.shape),
                x_dtype=str(dataset.x.dtype),
                has_labels=int(dataset.y is not None),
            )
            session.add(row)
            session.commit()
            return _dataset(row, model)

    def datasets(self, model: str) -> list[DatasetRecord]:
        with self._session() as session:
            model_id = self._model_id(session, model)
            rows = session.scalars(select(DatasetRow).where(DatasetRow.model_id == model_id).order_by(DatasetRow.id))
            return [_dataset(r, model) for r in rows]

    def dataset_for(self, model: str, role: str) -> DatasetRecord | None:
        """The newest dataset of ``role``; calibration falls back to the eval set."""
        found = self.datasets(model)
        for wanted in (role, "eval") if role == "calibration" else (role,):
            matching = [d for d in found if d.role == wanted]
            if matching:
                return matching[-1]
        return None

    def load_dataset(self, record: DatasetRecord) -> Dataset:
        return parse_npz(self.blobs.get(record.sha256), f"dataset '{record.name}'")

    # --- maintenance -----------------------------------------------------------------------
    def referenced_digests(self) -> set[str]:
        with self.engine.connect() as conn:
            return set(conn.scalars(select(ArtifactRow.sha256))) | set(conn.scalars(select(DatasetRow.sha256)))

    def collect_garbage(self) -> list[str]:
        """Delete blobs no row references (left by a crash between blob write and commit)."""
        orphans = sorted(self.blobs.digests() - self.referenced_digests())
        for digest in orphans:
            self.blobs.delete(digest)
        return orphans

    def check_integrity(self) -> list[str]:
        """Problems found: rows whose blob is missing or corrupt."""
        problems = []
        for digest in sorted(self.referenced_digests()):
            try:
                self.blobs.get(digest)
            except (NotFoundError, StoreError) as exc:
                problems.append(str(exc))
        return problems


__all__ = ["Registry"]
