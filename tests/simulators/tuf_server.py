"""The other side of the device's update client: a real HTTP server serving an update repository.

:class:`TufServer` serves ``metadata/…`` and ``targets/…`` from a real
:class:`~tinymlops.release.UpdateRepository` on 127.0.0.1 (a ``ThreadingHTTPServer`` in a
thread), through the repository's own path resolver, and records every request with its
headers. Hooks let a test play the attacker (or a broken mirror) in between:

* :meth:`TufServer.serve` — serve given bytes (or an HTTP status) for one path: tampered,
  forged or malformed files;
* :meth:`TufServer.serve_endless` — stream bytes for one path without end;
* :meth:`TufServer.capture` + :meth:`TufServer.freeze` — remember every file as it is now and
  later serve exactly that: a stale mirror (rollback, freeze);
* :meth:`TufServer.reset` — back to serving the live repository honestly.

Also here: :func:`world` builds a repository, starts the server and enrols device clients;
:func:`real_bundles` builds real signed bundles from a tiny ONNX model; :class:`Attacker` reads
what the repository serves and re-signs metadata with a key it stole from the workspace;
:func:`assert_refused` checks a refusal left the device's trusted metadata as it was.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from tuf.api.metadata import Metadata, MetaFile, Root

from tiny_models import tiny_onnx
from tinymlops.edge.updates import UpdateClient
from tinymlops.errors import InvalidInputError, NotFoundError, UpdateRefusedError
from tinymlops.release import ExpiryPolicy, UpdateRepository
from tinymlops.spec.update import UpdateInfo


@dataclass(frozen=True)
class Request:
    path: str
    headers: dict[str, str]


@dataclass(frozen=True)
class _Endless:
    chunk: bytes


class TufServer:
    """A real HTTP server for ``repo`` on 127.0.0.1 with hooks to misbehave (see the module doc)."""

    def __init__(self, repo: UpdateRepository) -> None:
        self.repo = repo
        self.requests: list[Request] = []
        self._overrides: dict[str, bytes | int | _Endless] = {}
        self._frozen: dict[str, bytes] | None = None
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 10

            def log_message(self, format: str, *args: object) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                rel = unquote(urlsplit(self.path).path).lstrip("/")
                with server._lock:
                    server.requests.append(Request(rel, {k: v for k, v in self.headers.items()}))
                    override = server._overrides.get(rel)
                    frozen = server._frozen
                if isinstance(override, _Endless):
                    self.send_response(200)
                    self.send_header("Content-Type", "application/octet-stream")
                    self.end_headers()
                    try:
                        for _ in range(1_000_000):  # ~ endless: far more than any client should read
                            self.wfile.write(override.chunk)
                    except (BrokenPipeError, ConnectionResetError, TimeoutError, OSError):
                        pass
                    return
                if isinstance(override, int):
                    return self._send(override, b"simulated error")
                if isinstance(override, bytes):
                    return self._send(200, override)
                if frozen is not None:
                    body = frozen.get(rel)
                    return self._send(404, b"not found") if body is None else self._send(200, body)
                try:
                    body = server.repo.resolve(rel).read_bytes()
                except NotFoundError:
                    return self._send(404, b"not found")
                except InvalidInputError:
                    return self._send(400, b"bad path")
                self._send(200, body)

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                with suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(body)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="tuf-server", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> TufServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> TufServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- misbehaving --
    def serve(self, rel: str, body: bytes | int) -> None:
        """Serve ``body`` (bytes, or an HTTP status code) for the URL path ``rel``."""
        with self._lock:
            self._overrides[rel] = body

    def serve_endless(self, rel: str, chunk: bytes = b"\x00" * 65536) -> None:
        with self._lock:
            self._overrides[rel] = _Endless(chunk)

    def capture(self) -> dict[str, bytes]:
        """Every file the repository serves right now, by URL path (a mirror's copy)."""
        out: dict[str, bytes] = {}
        for base, prefix in ((self.repo.metadata_dir, "metadata"), (self.repo.targets_dir, "targets")):
            for p in base.rglob("*"):
                if p.is_file() and not p.name.startswith("."):
                    out[f"{prefix}/{p.relative_to(base).as_posix()}"] = p.read_bytes()
        return out

    def freeze(self, files: dict[str, bytes]) -> None:
        """Serve exactly ``files`` from now on (a stale mirror); anything else is a 404."""
        with self._lock:
            self._frozen = dict(files)

    def reset(self) -> None:
        with self._lock:
            self._overrides.clear()
            self._frozen = None

    def paths_requested(self, prefix: str = "") -> list[str]:
        with self._lock:
            return [r.path for r in self.requests if r.path.startswith(prefix)]


# --- building blocks for tests ---------------------------------------------------------------
def info_for(data: bytes, *, model: str = "tiny", version: int = 1, urgent: bool = False, **kw: object) -> UpdateInfo:
    """Custom info for arbitrary target bytes (the bundle id derives from the content)."""
    return UpdateInfo(
        bundle_id=hashlib.sha256(data).hexdigest()[:32],
        model=model,
        version=version,
        variant=str(kw.pop("variant", "")),
        ref=str(kw.pop("ref", f"{model}:{version}")),
        target=str(kw.pop("target", "rpi-4")),
        size=len(data),
        urgent=urgent,
        published_at=datetime.now(UTC).replace(microsecond=0).isoformat(),
        **kw,  # type: ignore[arg-type]
    )


def put(repo: UpdateRepository, path: str, data: bytes, **kw: object) -> None:
    """Publish arbitrary bytes at ``path`` (for tests where the content does not matter)."""
    with repo.edit() as edit:
        edit.put(path, data, info_for(data, **kw))


def trusted_files(client: UpdateClient) -> dict[str, bytes]:
    """The device's trusted metadata cache, file by file (root.json follows its symlink)."""
    base = client.metadata_dir
    return {p.relative_to(base).as_posix(): p.read_bytes() for p in sorted(base.rglob("*.json")) if p.is_file()}


@dataclass
class World:
    repo: UpdateRepository
    server: TufServer
    base: Path
    clients: dict[str, UpdateClient] = field(default_factory=dict)

    def client(self, name: str = "device", **kw: object) -> UpdateClient:
        """A device client enrolled with the repository's current root (cached by name)."""
        if name not in self.clients:
            data_dir = self.base / "devices" / name
            UpdateClient.enrol(data_dir, self.repo.root_bytes())
            self.clients[name] = UpdateClient(data_dir, self.server.url, **kw)  # type: ignore[arg-type]
        return self.clients[name]


@contextmanager
def world(
    base: Path,
    *,
    bin_bits: int = 4,
    expiry: ExpiryPolicy | None = None,
    clock: object = None,
    workspace: Path | None = None,
) -> Iterator[World]:
    """A fresh repository in ``workspace`` (default ``base/ws``) served on 127.0.0.1."""
    ws = workspace or base / "ws"
    repo = UpdateRepository.init(ws, bin_bits=bin_bits, expiry=expiry, clock=clock)  # type: ignore[arg-type]
    with TufServer(repo) as server:
        yield World(repo, server, base)


@dataclass
class Bundles:
    """Real bundles built in a real workspace: ``build(device_keys)`` -> bundle bytes."""

    ws: object
    root: Path
    count: int = 0

    def build(self, device: object, ref: str = "tiny:1") -> bytes:
        from tinymlops.bundle.builder import build_bundle

        self.count += 1
        out = self.root / f"bundle-{self.count}.tmlb"
        build_bundle(
            self.ws,  # type: ignore[arg-type]
            ref,
            target="x86-edge-server",
            device_public_key=device.wrapping_public,  # type: ignore[attr-defined]
            out=out,
        )
        return out.read_bytes()


@contextmanager
def real_bundles(root: Path) -> Iterator[Bundles]:
    """A workspace with ``tiny:1`` and ``tiny:2`` registered, to build real signed bundles from."""
    from tinymlops.workspace import Workspace

    ws = Workspace.init(root / "ws")
    ws.registry.register("tiny", tiny_onnx(1.0))
    ws.registry.register("tiny", tiny_onnx(2.0))
    try:
        yield Bundles(ws, root)
    finally:
        ws.close()


# --- the attacker ------------------------------------------------------------------------------
class Attacker:
    """Someone between the repository and the device: sees everything served, and may hold keys
    stolen from the workspace (``steal(role)``) to sign forged metadata with."""

    def __init__(self, repo: UpdateRepository) -> None:
        self.repo = repo

    def current(self, role: str) -> tuple[str, Metadata]:  # type: ignore[type-arg]
        """(file name, metadata) of what the repository serves for ``role`` right now."""
        md_dir = self.repo.metadata_dir
        if role == "timestamp":
            return "timestamp.json", Metadata.from_bytes((md_dir / "timestamp.json").read_bytes())
        ts = Metadata.from_bytes((md_dir / "timestamp.json").read_bytes())
        snap_name = f"{ts.signed.snapshot_meta.version}.snapshot.json"
        snap = Metadata.from_bytes((md_dir / snap_name).read_bytes())
        if role == "snapshot":
            return snap_name, snap
        name = f"{snap.signed.meta[f'{role}.json'].version}.{role}.json"
        return name, Metadata.from_bytes((md_dir / name).read_bytes())

    def steal(self, role: str):  # type: ignore[no-untyped-def]
        """A signer for ``role``'s current key, read from the workspace's key directory."""
        versions = sorted(int(p.name.split(".")[0]) for p in self.repo.metadata_dir.glob("*.root.json"))
        root: Root = Metadata.from_bytes((self.repo.metadata_dir / f"{versions[-1]}.root.json").read_bytes()).signed
        return self.repo.keys.signer(role, root.keys[root.roles[role].keyids[0]])

    @staticmethod
    def sign(md: Metadata, *signers: object) -> bytes:  # type: ignore[type-arg]
        md.signatures.clear()
        for s in signers:
            md.sign(s, append=True)  # type: ignore[arg-type]
        return md.to_bytes()

    @staticmethod
    def snapshot_meta(version: int, data: bytes) -> MetaFile:
        return MetaFile(version, len(data), {"sha256": hashlib.sha256(data).hexdigest()})


def assert_refused(
    client: UpdateClient,
    target_path: str,
    attack: str,
    *,
    repo: UpdateRepository | None = None,
    stolen: tuple[str, ...] = (),
) -> UpdateRefusedError:
    """``client.check`` is refused as ``attack`` and the device trusts nothing the attacker made.

    Without ``repo`` the device's trusted metadata must be byte-for-byte unchanged. With it, a
    file may also have been replaced by a *genuine* file of the repository that verified before
    the refusal (python-tuf keeps a new valid timestamp even when the snapshot it names is then
    refused, as the TUF specification says) — but no targets metadata may change: the device
    learns of no target it did not know. ``stolen`` names roles whose key the attacker holds:
    their files may hold what the attacker signed (that is what a stolen key means)."""
    before = trusted_files(client)
    with pytest.raises(UpdateRefusedError) as err:
        client.check(target_path)
    assert err.value.attack == attack, err.value.message
    assert err.value.exit_code == 3
    after = trusted_files(client)
    genuine = {p.read_bytes() for p in repo.metadata_dir.glob("*.json")} if repo is not None else set()
    for name in sorted(set(before) | set(after)):
        if after.get(name) == before.get(name):
            continue
        assert name in after, f"trusted {name} was deleted"
        assert after[name] in genuine or name in {f"{r}.json" for r in stolen}, (
            f"trusted {name} was replaced by something the repository never signed"
        )
        assert name not in ("targets.json", "root.json") and not name.startswith(("bins-", "root_history/")), name
    return err.value
