"""``tinymlops bundle …``: build, inspect and verify signed, encrypted bundles."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Annotated, Any

import typer

from tinymlops.cli.output import JsonOpt, WorkspaceOpt, console, emit_json, fmt_bytes, parse_pairs, table
from tinymlops.errors import ConfigError, UsageError

app = typer.Typer(help="Signed, encrypted model bundles: build, inspect, verify.", no_args_is_help=True)


def _read_table(path: Path, what: str) -> dict[str, Any]:
    """A JSON or TOML file holding one table."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read {what}: {exc}", file=str(path)) from exc
    try:
        data = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: {what} is not valid {path.suffix.lstrip('.') or 'JSON'}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: {what} must be a table/object, got {type(data).__name__}")
    return data


def _pairs(values: list[str] | None, what: str) -> dict[str, str]:
    out = parse_pairs(values, what, form="NAME=VALUE")
    empty = next((k for k, v in out.items() if not v), None)
    if empty is not None:
        raise UsageError(f"{what}: {empty!r} has no value (NAME=VALUE)")
    return out


@app.command("build")
def build(
    ref: Annotated[str, typer.Argument(help="NAME[:VERSION][/VARIANT] of the model to bundle.")],
    target: Annotated[str, typer.Option("--target", "-t", help="Device profile the bundle is for.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Bundle file to write.")],
    device_key: Annotated[
        Path | None,
        typer.Option("--device-key", help="The device's X25519 public key file (encrypt for that device)."),
    ] = None,
    fleet_key: Annotated[
        bool, typer.Option("--fleet-key", help="Encrypt for the workspace's fleet key instead of one device.")
    ] = False,
    pipeline: Annotated[
        Path | None, typer.Option("--pipeline", help="Pipeline spec (.json or .toml) to validate and embed.")
    ] = None,
    extra_model: Annotated[
        list[str] | None, typer.Option("--extra-model", help="Cascade model NAME=REF (repeatable).")
    ] = None,
    wasm: Annotated[list[str] | None, typer.Option("--wasm", help="WebAssembly module NAME=FILE (repeatable).")] = None,
    policies: Annotated[
        Path | None, typer.Option("--policies", help="Policy tables (.json or .toml): metering, telemetry, …")
    ] = None,
    no_check: Annotated[bool, typer.Option("--no-check", help="Do not embed a smoke-test vector.")] = False,
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Build a bundle: check the model against the target, encrypt it, sign the manifest."""
    from tinymlops.bundle.builder import build_bundle
    from tinymlops.crypto.keys import load_public_key
    from tinymlops.workspace import Workspace

    if (device_key is None) == (not fleet_key):
        raise UsageError("give exactly one of --device-key PUBFILE or --fleet-key")
    pub = load_public_key(device_key) if device_key is not None else None
    pipeline_doc = _read_table(pipeline, "pipeline spec") if pipeline is not None else None
    policy_doc = _read_table(policies, "policies") if policies is not None else None
    wasm_modules: dict[str, bytes] = {}
    for name, file in _pairs(wasm, "--wasm").items():
        try:
            wasm_modules[name] = Path(file).read_bytes()
        except OSError as exc:
            raise UsageError(f"{file}: cannot read WebAssembly module: {exc.strerror or exc}", file=file) from exc
    with Workspace.open(workspace) as ws:
        result = build_bundle(
            ws,
            ref,
            target=target,
            device_public_key=pub,
            fleet=fleet_key,
            pipeline=pipeline_doc,
            extra_models=_pairs(extra_model, "--extra-model"),
            wasm_modules=wasm_modules,
            policies=policy_doc,
            out=out,
            check=not no_check,
        )
    if json_out:
        emit_json(result.to_dict())
        return
    d = result.to_dict()
    console.print(
        f"built [bold]{d['path']}[/] ({fmt_bytes(d['size'])}): {d['ref']} for {d['target']}, "
        f"encrypted for {d['key_wrap']['mode']} key {d['key_wrap']['recipient_key_id']}, "
        f"signed by release key {d['release_key_id']}",
        highlight=False,
    )
    for note in d["notes"]:
        console.print(f"  {note}", highlight=False)


@app.command("inspect")
def inspect(
    file: Annotated[Path, typer.Argument(help="Bundle file.")],
    json_out: JsonOpt = False,
) -> None:
    """Show a bundle's manifest (never secrets; NOT verified — use `bundle verify`)."""
    from tinymlops.bundle.container import unpack
    from tinymlops.bundle.reader import inspect_bundle, read_source, signature_key_id

    data = read_source(file)
    manifest = inspect_bundle(data)
    container = {name: len(blob) for name, blob in unpack(data).items()}
    claimed = signature_key_id(data)
    if json_out:
        emit_json({"manifest": manifest, "container": container, "signature_key_id": claimed, "verified": False})
        return
    model = manifest["model"]
    rows = [
        ["bundle id", manifest["bundle_id"]],
        ["spec version", manifest["spec_version"]],
        ["created", manifest["created_at"]],
        ["model", f"{model['ref']} ({model['format']}, {model['backend']}, {fmt_bytes(model['size'])})"],
        ["target", manifest["target"]],
        ["encrypted for", f"{manifest['key_wrap']['mode']} key {manifest['key_wrap']['recipient_key_id']}"],
        ["signed by (claimed)", claimed],
        ["lineage", " → ".join(step["ref"] for step in manifest.get("lineage", []))],
        ["pipeline", "yes" if manifest.get("pipeline") else "none"],
        ["cascade models", ", ".join(f"{n}={m['ref']}" for n, m in manifest.get("extra_models", {}).items()) or "-"],
        [
            "policies",
            ", ".join(
                n
                for n, t in manifest.get("policies", {}).items()
                if isinstance(t, dict) and t.get("enabled") is not False
            )
            or "none enabled",
        ],
        ["check vector", "yes" if manifest.get("check") else "none"],
    ]
    table(f"bundle {file.name} (not verified)", ["field", "value"], rows)
    table(
        "members",
        ["member", "role", "size", "encrypted", "sha256"],
        [
            [n, m.get("role", "-"), fmt_bytes(container.get(n, 0)), m.get("encrypted", "-"), m.get("sha256", "")[:16]]
            for n, m in manifest.get("members", {}).items()
        ],
    )


@app.command("verify")
def verify(
    file: Annotated[Path, typer.Argument(help="Bundle file.")],
    release_pub: Annotated[
        list[Path] | None,
        typer.Option("--release-pub", help="Trusted release public key file (repeatable; default: the workspace's)."),
    ] = None,
    workspace: WorkspaceOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Verify the signature, the manifest version and every member hash; exit non-zero on failure."""
    from tinymlops.bundle.reader import verify_bundle
    from tinymlops.crypto.keys import key_id, load_public_key

    if release_pub:
        trusted = [load_public_key(p) for p in release_pub]
    else:
        from tinymlops.bundle.workspace_keys import release_key_path

        root = workspace
        if root is None:
            import os

            root = Path(os.environ.get("TINYMLOPS_WORKSPACE") or Path.cwd())
        path = release_key_path(root)
        pub_path = path.with_name(path.name + ".pub")
        if pub_path.exists():
            trusted = [load_public_key(pub_path)]
        elif path.exists():
            from tinymlops.crypto.keys import load_signing_key

            trusted = [load_signing_key(path).public_key()]
        else:
            raise UsageError(
                f"no release key in {root} (looked for {pub_path}); pass --release-pub KEYFILE "
                "or run `tinymlops keys init` in the workspace"
            )
    result = verify_bundle(file, trusted_release_keys=trusted)
    m = result.manifest
    info = {
        "verified": True,
        "file": str(file),
        "bundle_id": m.bundle_id,
        "ref": m.model.ref,
        "target": m.target,
        "spec_version": m.spec_version,
        "release_key_id": result.release_key_id,
        "trusted_key_ids": sorted(key_id(k) for k in trusted),
        "members": {name: e.size for name, e in m.members.items()},
        "key_wrap": m.key_wrap.public_summary(),
    }
    if json_out:
        emit_json(info)
    else:
        console.print(
            f"[green]verified[/] {file}: {m.model.ref} for {m.target}, signed by release key "
            f"{result.release_key_id}, {len(m.members)} member(s) intact",
            highlight=False,
        )
