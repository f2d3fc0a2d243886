"""The one exception hierarchy of tinymlops.

Two branches keep "the caller misused the API" apart from "the other side sent bad or
hostile data":

* :class:`UsageError` — the caller asked for something that cannot be done as asked
  (unknown model, bad reference syntax, unknown target, invalid configuration).
* :class:`InvalidInputError` — data handed to us is malformed or hostile (a corrupt model
  file, a dataset of the wrong shape, a tampered document).

Everything else is an operation that was well-formed but failed (:class:`OperationError`),
e.g. a recipe that could not produce a variant, or no variant fitting a target.
The CLI maps every :class:`TinyMLOpsError` to a clear message and a non-zero exit code.
"""

from __future__ import annotations


class TinyMLOpsError(Exception):
    """Base class of every error raised on purpose by tinymlops."""

    #: exit code the CLI uses for this class of error
    exit_code: int = 1

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, object]:
        return {"error": type(self).__name__, "message": self.message, **self.details}


# --- the caller misused the API ----------------------------------------------------------
class UsageError(TinyMLOpsError):
    """The caller asked for something that cannot be done as asked."""

    exit_code = 2


class ConfigError(UsageError):
    """A workspace configuration or profile file is invalid."""


class WorkspaceError(UsageError):
    """No workspace where one was expected, or one exists where none should."""


class NotFoundError(UsageError):
    """A named thing (model, version, variant, dataset, target, recipe) does not exist."""


class ModelNotFoundError(NotFoundError):
    """No model, version or variant matches a reference."""


class TargetNotFoundError(NotFoundError):
    """No device profile with that name."""


class RecipeNotFoundError(NotFoundError):
    """No recipe with that name."""


class ModelRefError(UsageError):
    """A model reference string (``NAME[:VERSION][/VARIANT...]``) is malformed."""


class MissingKeyError(UsageError):
    """An operation needs a signing key that is not here (e.g. the update repository's root key,
    kept offline). ``role`` and ``key_id`` name the key; ``path`` says where it was looked for."""


class SlotTransitionError(UsageError):
    """The device agent asked its A/B slot state machine for a transition that is not legal now
    (staging while an install is pending, committing a bundle that was not smoke-tested, …)."""


# --- the other side sent bad or hostile data ---------------------------------------------
class InvalidInputError(TinyMLOpsError):
    """Data handed to tinymlops is malformed, corrupt or hostile."""

    exit_code = 3


class InvalidModelError(InvalidInputError):
    """A model file is not a valid ONNX or TFLite model."""


class InvalidDatasetError(InvalidInputError):
    """A dataset file is not a valid ``.npz`` or does not match the model."""


class SpecError(InvalidInputError):
    """A contract document (profile, context, manifest, …) does not parse or validate."""


class UnsupportedVersionError(SpecError):
    """A document's major ``spec_version`` is newer (or older) than this build reads."""


class PipelineError(SpecError):
    """A pipeline spec is invalid: unknown op, bad parameters, a missing stage or model."""


class IntegrityError(InvalidInputError):
    """A bundle (or one named member of it) is corrupt, truncated or tampered with.

    ``member`` names the part that failed (``manifest.json``, ``manifest.sig``, a payload…).
    """

    def __init__(self, message: str, *, member: str | None = None, **details: object) -> None:
        super().__init__(message, member=member, **details)
        self.member = member


class SignatureError(IntegrityError):
    """A signature does not verify, or was made by a key that is not trusted."""


class UpdateRefusedError(IntegrityError):
    """The update repository served metadata or a file that failed TUF verification.

    ``attack`` names what was detected (``rollback``, ``freeze``, ``mix-and-match``,
    ``arbitrary-package``, ``endless-data``, ``untrusted-signature``, ``malformed-metadata``,
    ``invalid-metadata``); ``member`` names the metadata file or target that was refused. The
    device's trusted metadata is left as it was before the refused update.
    """

    def __init__(self, message: str, *, attack: str, member: str | None = None, **details: object) -> None:
        super().__init__(message, member=member, attack=attack, **details)
        self.attack = attack


class KeyMismatchError(InvalidInputError):
    """The key offered cannot open this bundle (wrong device, wrong fleet)."""


class AgentStateError(InvalidInputError):
    """The device agent's state file is corrupt, truncated or inconsistent (the agent recovers
    from it by re-verifying its slots; it never crashes on it)."""


class PrivacyBudgetExceeded(UsageError):
    """Releasing telemetry with this epsilon would exceed the device's privacy budget (per window or
    in any 24 hours); nothing was spent. ``cap`` (``window`` | ``day``), ``requested`` and
    ``remaining`` say which and by how much.

    A usage error, not an operational failure: the budget is the caller's own state under the
    bundle's own policy (``EpsilonBudget.can_spend`` tells beforehand), nothing is broken, and
    retrying cannot succeed until the window or the day moves on — the caller withholds the
    histogram instead."""


class InputMismatchError(UsageError):
    """A prediction input has the wrong shape or dtype for the model."""


# --- requests to the control plane (the server maps these to HTTP status codes) -----------
class AuthenticationError(InvalidInputError):
    """A request does not prove who sent it: credentials missing, malformed, unknown, expired or
    revoked (HTTP 401)."""


class RequestSignatureError(AuthenticationError, SignatureError):
    """A device request's signature does not verify over what was received (HTTP 401)."""


class StaleRequestError(AuthenticationError):
    """A signed request's timestamp is outside the accepted clock window (HTTP 401)."""


class ReplayedRequestError(AuthenticationError):
    """A signed request reuses a nonce the server has already seen (HTTP 401)."""


class PayloadTooLargeError(InvalidInputError):
    """A request body is larger than the server accepts (HTTP 413)."""


class AccessDeniedError(UsageError):
    """The caller is known but its credentials do not allow this: a scope too small, or a
    device asking for another device's resource (HTTP 403)."""


class ConflictError(UsageError):
    """The request conflicts with the current state: an enrolment token already used, a device
    already enrolled (HTTP 409)."""


class RolloutTransitionError(ConflictError):
    """A rollout was asked for a transition that is not legal in its current state (promoting a
    halted rollout, resuming one that is rolled back, …). ``action`` and ``status`` name both (HTTP 409)."""


class DuplicateBatchError(ConflictError):
    """A telemetry batch with this digest was already accepted from this device: it was merged once
    and is not merged again (HTTP 409). ``digest`` names it; the device treats the batch as delivered."""

    def __init__(self, message: str, *, digest: str) -> None:
        super().__init__(message, digest=digest)
        self.digest = digest


class WindowOverlapError(ConflictError):
    """A telemetry window overlaps one already stored for the same device and bundle (a replayed
    window, or a device clock set back): the whole batch is refused, nothing of it is stored (HTTP
    409). The details name the window (``window``, its ``bundle_id``, ``window_start``/``window_end``)
    and the stored one (``stored_start``/``stored_end``, ``stored_batch_id``)."""


class DuplicateReportError(ConflictError):
    """A usage report with this digest was already accepted from this device: it is not counted
    again (HTTP 409). ``digest`` names it and ``next_seq`` is the first ledger entry the server
    still waits for; the device treats the report as delivered."""

    def __init__(self, message: str, *, digest: str, next_seq: int) -> None:
        super().__init__(message, digest=digest, next_seq=next_seq)
        self.digest = digest
        self.next_seq = next_seq


class ReportGapError(ConflictError):
    """A usage report starts after the entries the server has of that chain (``first_seq`` above
    ``next_seq``): a report in between was lost or the reports arrived out of order. Nothing is
    stored (HTTP 409); the device sends again from ``next_seq``."""

    def __init__(self, message: str, *, first_seq: int, next_seq: int) -> None:
        super().__init__(message, first_seq=first_seq, next_seq=next_seq)
        self.first_seq = first_seq
        self.next_seq = next_seq


class LicenseError(InvalidInputError):
    """A prepaid query license does not apply here: issued for another device or model, not
    chained to the license it claims to top up, or not a license at all. A forged or altered
    license is a :class:`SignatureError` (``member="license"``). ``reason`` names the check."""


class LedgerTamperedError(IntegrityError):
    """The device's usage ledger does not verify: an edited, deleted or reordered row, a broken hash
    link, counts that do not add up, or an older copy restored behind the monotonic counter's back.
    ``reason`` names the check and ``seq`` the first entry that failed. The device does not fail
    open: metered predictions stay refused until it is re-licensed."""


# --- well-formed requests that failed -----------------------------------------------------
class OperationError(TinyMLOpsError):
    """A well-formed operation that could not be completed."""

    exit_code = 4


class RecipeError(OperationError):
    """A recipe could not derive a variant (conversion mismatch, quantizer failure, …)."""


class ConversionMismatchError(RecipeError):
    """A converted model's outputs differ from the original's beyond the stated tolerance."""


class BackendError(OperationError):
    """A runtime backend could not load or run a model."""


class StageError(OperationError):
    """A pipeline stage failed at run time (e.g. a WebAssembly step ran out of fuel or memory)."""


class IncompatibleError(OperationError):
    """No variant (or not this variant) can run on the requested target."""


class StoreError(OperationError):
    """The metadata or blob store failed (I/O error, integrity failure)."""


class ServerRequestError(OperationError):
    """The control-plane server refused or failed a device's request; ``status`` is the HTTP
    status and ``error_type`` the server's error type (``AuthenticationError``, …)."""

    def __init__(self, message: str, *, status: int, error_type: str = "", **details: object) -> None:
        super().__init__(message, status=status, error_type=error_type, **details)
        self.status = status
        self.error_type = error_type


class ServerUnreachableError(ServerRequestError):
    """The control-plane server could not be reached (connection refused, timeout, DNS)."""


class UpdateSourceError(OperationError):
    """The device agent's update source could not be checked or fetched from (unreachable server,
    unreadable offer directory); the agent backs off and tries again."""


class UpdateError(UpdateSourceError):
    """The TUF update client could not complete a check or download: the repository could not be
    reached, answered with an HTTP error, or the device's local metadata cache could not be written."""


class MeteringRefusedError(OperationError):
    """A metered prediction was refused by the device's prepaid license (no network needed).

    Not the caller's misuse (the call was well-formed) nor hostile data: the license in force does
    not allow one more query now. ``remaining`` and ``limit`` (queries), ``license_id`` and
    ``reason`` say why; the prediction did not run and nothing was debited for it."""


class QuotaExceededError(MeteringRefusedError):
    """Every prepaid query of the license chain is used (or reserved); a top-up is needed."""


class LicenseExpiredError(MeteringRefusedError):
    """The device clock is outside the license's validity window, or was set back before the last
    ledger entry (``reason`` = ``expired`` | ``not-yet-valid`` | ``clock-set-back``)."""


class LicenseScopeError(MeteringRefusedError):
    """The license in force does not cover the model version this runtime serves."""


class LicenseRevokedError(MeteringRefusedError):
    """The issuer revoked the license in force (the device learnt it at its last contact and wrote
    it into its ledger); metered predictions stay refused until a top-up is installed."""


class LedgerUnusableError(MeteringRefusedError):
    """The model's usage ledger on this device cannot be used, so its metered predictions are refused:
    it does not verify (``reason="ledger-tampered"``, the :class:`LedgerTamperedError`'s message and
    ``ledger_reason`` carried along; it stays refused until the device is re-licensed), or it cannot be
    opened now (``reason="ledger-unavailable"``: held by another meter, unreadable; tried again at the
    next call). ``model`` names the model. The bundle is not at fault: the agent keeps it and never
    rolls back for it."""


__all__ = [
    "AccessDeniedError",
    "AgentStateError",
    "AuthenticationError",
    "BackendError",
    "ConfigError",
    "ConflictError",
    "ConversionMismatchError",
    "DuplicateBatchError",
    "DuplicateReportError",
    "IncompatibleError",
    "InputMismatchError",
    "IntegrityError",
    "InvalidDatasetError",
    "InvalidInputError",
    "InvalidModelError",
    "KeyMismatchError",
    "LedgerTamperedError",
    "LedgerUnusableError",
    "LicenseError",
    "LicenseExpiredError",
    "LicenseRevokedError",
    "LicenseScopeError",
    "MeteringRefusedError",
    "MissingKeyError",
    "ModelNotFoundError",
    "ModelRefError",
    "NotFoundError",
    "OperationError",
    "PayloadTooLargeError",
    "PipelineError",
    "PrivacyBudgetExceeded",
    "QuotaExceededError",
    "RecipeError",
    "RecipeNotFoundError",
    "ReplayedRequestError",
    "ReportGapError",
    "RequestSignatureError",
    "ServerRequestError",
    "ServerUnreachableError",
    "SignatureError",
    "SlotTransitionError",
    "SpecError",
    "StageError",
    "StaleRequestError",
    "StoreError",
    "TargetNotFoundError",
    "TinyMLOpsError",
    "UnsupportedVersionError",
    "UpdateError",
    "UpdateRefusedError",
    "UpdateSourceError",
    "UsageError",
    "WindowOverlapError",
    "WorkspaceError",
]
