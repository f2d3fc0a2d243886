"""The operator support tables ONNX Runtime ships for its mobile execution providers.

ONNX Runtime's Python package carries three Markdown tables beside its mobile usability
checker (``onnxruntime/tools/mobile_helpers/``): ``nnapi_supported_ops.md``,
``coreml_supported_mlprogram_ops.md`` and ``coreml_supported_neuralnetwork_ops.md``. Each row is
``|domain:OpType|caveat|``. We read them exactly the way ORT's own checker
(``usability_checker._SupportedOpsChecker``) does, so our verdict on "is this op supported by
the NNAPI / CoreML EP" is the checker's verdict:

* only lines that start with ``|`` and split into exactly four pieces on ``|`` are rows;
* a row whose first cell has no ``:`` is skipped (the header, and - notably - the
  ``ai.onnx.ReduceSum`` row of the CoreML NeuralNetwork table, which has a dot instead of a colon,
  so ORT's checker never treats ReduceSum as supported there);
* the op cell is used verbatim: matching is exact and case-sensitive (the CoreML ML Program table
  spells ``ai.onnx:Argmax``, so ONNX ``ArgMax`` is unsupported per the checker);
* a node matches when ``(node.domain or "ai.onnx") + ":" + node.op_type`` is a row.

The caveat column ("Only 2D Conv is supported", ...) describes *partial* support that ORT's
checker does not verify either; we keep it as a note per op.

Op names are returned in :class:`~tinymlops.spec.ModelInfo`'s convention: the bare op type for the
default domain (``"Conv"``), ``"domain::OpType"`` otherwise (``"com.microsoft::QLinearAdd"``).

ONNX Runtime is located with :func:`importlib.util.find_spec`, which does not import it.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from tinymlops.errors import ConfigError

#: table name (as used by ``DeviceProfile.onnx_operator_table``) -> file ORT ships
TABLE_FILES: Mapping[str, str] = {
    "nnapi": "nnapi_supported_ops.md",
    "coreml-mlprogram": "coreml_supported_mlprogram_ops.md",
    "coreml-neuralnetwork": "coreml_supported_neuralnetwork_ops.md",
}

#: the names ONNX gives its default domain
DEFAULT_DOMAINS = ("", "ai.onnx")


def split_op(key: str) -> tuple[str, str]:
    """``"Conv"`` -> ``("", "Conv")``; ``"com.microsoft::QLinearAdd"`` -> ``("com.microsoft", "QLinearAdd")``.

    Also accepts ORT's single-colon table spelling (``"ai.onnx:Conv"``). The default domain is
    always returned as ``""``.
    """
    if "::" in key:
        domain, _, op = key.rpartition("::")
    elif ":" in key:
        domain, _, op = key.partition(":")
    else:
        domain, op = "", key
    return ("" if domain in DEFAULT_DOMAINS else domain), op


def canonical_op(key: str) -> str:
    """The ModelInfo spelling of an op key: bare for the default domain, else ``domain::OpType``."""
    domain, op = split_op(key)
    return op if not domain else f"{domain}::{op}"


@dataclass(frozen=True)
class OperatorTable:
    """One parsed table. ``ops`` are canonical op names; ``notes`` their caveats (may be empty);
    ``ignored_rows`` are table rows ORT's checker skips (so they count as unsupported)."""

    name: str
    path: Path
    ops: frozenset[str]
    notes: Mapping[str, str] = field(default_factory=dict)
    ignored_rows: tuple[str, ...] = ()

    def supports(self, op: str) -> bool:
        return canonical_op(op) in self.ops

    def note(self, op: str) -> str:
        """The partial-support caveat for ``op`` ("" if none or unsupported)."""
        return self.notes.get(canonical_op(op), "")

    def __contains__(self, op: object) -> bool:
        return isinstance(op, str) and self.supports(op)


def parse_table(text: str) -> tuple[dict[str, str], list[str]]:
    """Parse table text the way ORT's checker does. Returns ``({canonical_op: caveat}, ignored)``."""
    ops: dict[str, str] = {}
    ignored: list[str] = []
    for line in text.splitlines():
        if not line.startswith("|"):
            continue
        pieces = line.strip().split("|")
        if len(pieces) != 4:  # '', op, caveat, ''
            ignored.append(line.strip())
            continue
        domain_op, caveat = pieces[1], pieces[2].replace("<br/>", " ")
        if ":" not in domain_op:
            # the header and its separator, plus malformed rows ORT's checker skips too
            if domain_op.strip() and set(domain_op.strip()) != {"-"} and domain_op.strip() != "Operator":
                ignored.append(domain_op)
            continue
        ops[canonical_op(domain_op)] = caveat
    return ops, ignored


def ort_mobile_helpers_dir() -> Path:
    """The ``onnxruntime/tools/mobile_helpers`` directory of the installed ONNX Runtime."""
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("ONNX Runtime's operator tables are needed but the 'onnxruntime' package is not installed")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "tools" / "mobile_helpers"
        if candidate.is_dir():
            return candidate
    raise ConfigError(
        "the installed onnxruntime package has no tools/mobile_helpers directory "
        f"(looked in {', '.join(spec.submodule_search_locations)})"
    )


@cache
def load_table(name: str) -> OperatorTable:
    """Load one of :data:`TABLE_FILES` from the installed ONNX Runtime (cached)."""
    if name not in TABLE_FILES:
        raise ConfigError(f"unknown ONNX Runtime operator table {name!r}; known: {', '.join(TABLE_FILES)}")
    path = ort_mobile_helpers_dir() / TABLE_FILES[name]
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read ONNX Runtime operator table {path}: {exc}") from exc
    ops, ignored = parse_table(text)
    return OperatorTable(name=name, path=path, ops=frozenset(ops), notes=ops, ignored_rows=tuple(ignored))


__all__ = [
    "TABLE_FILES",
    "OperatorTable",
    "canonical_op",
    "load_table",
    "ort_mobile_helpers_dir",
    "parse_table",
    "split_op",
]
