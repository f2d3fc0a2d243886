"""Sealed telemetry batches: what travels from a device's upload store to the server's ingestion.

A batch is sealed on the device and opened on the server, by this one module (edge-safe: the
standard library and ``cryptography``):

* the **payload** is :meth:`TelemetryBatch.to_bytes` — canonical JSON, so its SHA-256 (the
  batch **digest**) names the batch: a retried or replayed upload has the same digest, and the
  server merges a digest once;
* the **signature** is the device's Ed25519 signature over ``DOMAIN + payload`` (the domain
  string keeps a telemetry signature from ever verifying as any other document the device signs);
  it travels hex-encoded in the ``X-Tinymlops-Batch-Signature`` header and the server keeps it
  with the batch, so where a batch came from can be shown later, not only at the door;
* the **body** is the payload compressed with gzip (``Content-Encoding: gzip``;
  the JSON of KLL sketches compresses ~2–3×).

:func:`open_batch` refuses, in this order and before building anything large: a body over
``max_body_bytes`` (:class:`~tinymlops.errors.PayloadTooLargeError`), a body that is not gzip or
decompresses past ``MAX_BATCH_BYTES`` (a zip bomb stops there: decompression is bounded, never
whole), a malformed signature header, a signature that does not verify with the key the device
enrolled with (:class:`~tinymlops.errors.SignatureError`), a payload that is not a valid batch
(:class:`~tinymlops.errors.SpecError`), a payload that is not canonical (the digest must name
exactly one document), and a batch whose ``device_id`` is not the signer's.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import zlib
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from tinymlops.crypto.keys import ed25519_public, key_id
from tinymlops.crypto.signing import sign, verify
from tinymlops.errors import PayloadTooLargeError, SignatureError, SpecError
from tinymlops.spec.telemetry import MAX_BATCH_BYTES, TelemetryBatch

DOMAIN = b"TINYMLOPS-TELEMETRY-BATCH-V1\n"
SIGNATURE_HEADER = "X-Tinymlops-Batch-Signature"
CONTENT_TYPE = "application/vnd.tinymlops.telemetry-batch+json"
CONTENT_ENCODING = "gzip"
#: a compressed body larger than this is refused before it is decompressed
MAX_BODY_BYTES = 4 * 1024 * 1024
_SIG_HEX = re.compile(r"^[0-9a-f]{128}$")


@dataclass(frozen=True)
class SealedBatch:
    """A batch ready to upload: the gzip body, the hex signature header value and the digest."""

    body: bytes
    signature: str
    digest: str
    payload_bytes: int

    def headers(self) -> dict[str, str]:
        return upload_headers(self.signature)


def upload_headers(signature: str) -> dict[str, str]:
    """The headers a sealed body goes with: its type, its gzip encoding and its signature."""
    return {"Content-Type": CONTENT_TYPE, "Content-Encoding": CONTENT_ENCODING, SIGNATURE_HEADER: signature}


@dataclass(frozen=True)
class OpenedBatch:
    """A batch the server accepted at the door: parsed, its digest, its signature (hex)."""

    batch: TelemetryBatch
    digest: str
    signature: str
    payload_bytes: int
    body_bytes: int


def batch_digest(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def seal_batch(batch: TelemetryBatch, signing_key: Ed25519PrivateKey, *, level: int = 6) -> SealedBatch:
    """Sign and compress ``batch`` (the device's side). The batch's ``device_id`` must be the key's id."""
    if batch.device_id != key_id(signing_key):
        raise SpecError(
            f"telemetry batch: device_id {batch.device_id} is not the id of the signing key ({key_id(signing_key)})"
        )
    payload = batch.to_bytes()
    if len(payload) > MAX_BATCH_BYTES:
        raise PayloadTooLargeError(
            f"telemetry batch: {len(payload)} bytes is more than the {MAX_BATCH_BYTES} a batch may have; "
            "send fewer windows per batch"
        )
    signature = sign(signing_key, DOMAIN + payload).hex()
    body = gzip.compress(payload, compresslevel=level, mtime=0)
    return SealedBatch(body=body, signature=signature, digest=batch_digest(payload), payload_bytes=len(payload))


def _decompress(body: bytes, limit: int) -> bytes:
    # gzip framing (wbits 16+): bounded output, so a bomb stops at limit + 1 bytes
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
        if len(out) > limit or inflater.unconsumed_tail:
            raise PayloadTooLargeError(f"telemetry batch: decompresses to more than the {limit} bytes a batch may have")
        out += inflater.flush()
    except zlib.error as exc:
        raise SpecError(f"telemetry batch: the body is not valid gzip ({exc})") from exc
    if len(out) > limit:
        raise PayloadTooLargeError(f"telemetry batch: decompresses to more than the {limit} bytes a batch may have")
    if not inflater.eof:
        raise SpecError("telemetry batch: the gzip body is truncated")
    if inflater.unused_data:
        raise SpecError("telemetry batch: bytes after the end of the gzip body")
    return out


def open_batch(
    body: bytes,
    signature: str | None,
    public_key: Ed25519PublicKey | bytes,
    *,
    max_body_bytes: int = MAX_BODY_BYTES,
    max_payload_bytes: int = MAX_BATCH_BYTES,
) -> OpenedBatch:
    """Check and parse an uploaded batch (the server's side; see the module doc for the order)."""
    body = bytes(body)
    if len(body) > max_body_bytes:
        raise PayloadTooLargeError(
            f"telemetry batch: the body is {len(body)} bytes, more than the {max_body_bytes} accepted"
        )
    if not body:
        raise SpecError("telemetry batch: the body is empty")
    payload = _decompress(body, max_payload_bytes)
    if signature is None or not _SIG_HEX.match(signature):
        raise SignatureError(
            f"telemetry batch: header {SIGNATURE_HEADER} must hold the device's Ed25519 signature "
            "(128 lower-case hex digits)"
        )
    pub = ed25519_public(public_key)
    verify(pub, bytes.fromhex(signature), DOMAIN + payload, member="the telemetry batch")
    batch = TelemetryBatch.from_bytes(payload)
    if batch.to_bytes() != payload:
        raise SpecError("telemetry batch: the payload is not canonical JSON (sorted keys, no whitespace)")
    if batch.device_id != key_id(pub):
        raise SpecError(f"telemetry batch: names device {batch.device_id}, but was signed by device {key_id(pub)}")
    return OpenedBatch(
        batch=batch,
        digest=batch_digest(payload),
        signature=signature,
        payload_bytes=len(payload),
        body_bytes=len(body),
    )


__all__ = [
    "CONTENT_ENCODING",
    "CONTENT_TYPE",
    "DOMAIN",
    "MAX_BODY_BYTES",
    "SIGNATURE_HEADER",
    "OpenedBatch",
    "SealedBatch",
    "batch_digest",
    "open_batch",
    "seal_batch",
    "upload_headers",
]
