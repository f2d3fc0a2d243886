"""The bundle container: one strict, single-file sequence of named members.

Format (all integers big-endian)::

    magic          8 bytes   b"TMLBNDL1"
    member count   u32       1 .. MAX_MEMBERS
    then per member, in order:
      name length  u16       1 .. MAX_NAME_BYTES
      name         UTF-8     letters, digits, '_', '.', '-' in '/'-separated segments
      data length  u64       <= MAX_MEMBER_BYTES and <= the bytes that remain
      data         bytes
    nothing after the last member

The container itself carries no checksums: integrity comes from the signed manifest, which
lists the SHA-256 and size of every other member. The parser is strict so that no byte is
"free": a bad magic, count, name or length, a duplicate name, truncation or trailing bytes are
each an :class:`IntegrityError` whose ``member`` names the member being read (or
``"container header"``). Lengths are checked against limits and against the bytes actually
present *before* anything is allocated or sliced.

Edge-safe: standard library only.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping

from tinymlops.errors import IntegrityError, UsageError

MAGIC = b"TMLBNDL1"
HEADER = "container header"
MAX_MEMBERS = 1024
MAX_NAME_BYTES = 1024
MAX_MEMBER_BYTES = 2**32  # 4 GiB: far beyond any TinyML model, small enough to refuse nonsense
MAX_BUNDLE_BYTES = 2**34

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_SEGMENT = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


def _valid_name(name: str) -> bool:
    return all(_SEGMENT.match(seg) and seg not in (".", "..") for seg in name.split("/"))


def pack(members: Mapping[str, bytes]) -> bytes:
    """Serialise ``members`` (in the mapping's order) into one container."""
    if not members:
        raise UsageError("a bundle container needs at least one member")
    if len(members) > MAX_MEMBERS:
        raise UsageError(f"a bundle container holds at most {MAX_MEMBERS} members, got {len(members)}")
    parts = [MAGIC, _U32.pack(len(members))]
    for name, data in members.items():
        encoded = name.encode("utf-8")
        if not encoded or len(encoded) > MAX_NAME_BYTES or not _valid_name(name):
            raise UsageError(f"bad member name {name!r}")
        if len(data) > MAX_MEMBER_BYTES:
            raise UsageError(f"member '{name}' is {len(data)} bytes; the limit is {MAX_MEMBER_BYTES}")
        parts += [_U16.pack(len(encoded)), encoded, _U64.pack(len(data)), bytes(data)]
    return b"".join(parts)


def unpack(data: bytes | bytearray | memoryview) -> dict[str, bytes]:
    """Parse a container into ``{name: bytes}`` (in file order), refusing anything not exact."""
    view = memoryview(data if isinstance(data, bytes) else bytes(data))
    total = len(view)
    if total > MAX_BUNDLE_BYTES:
        raise IntegrityError(f"bundle is {total} bytes; the limit is {MAX_BUNDLE_BYTES}", member=HEADER)
    if total < len(MAGIC) + _U32.size:
        raise IntegrityError(f"not a tinymlops bundle: only {total} bytes (truncated?)", member=HEADER)
    if bytes(view[: len(MAGIC)]) != MAGIC:
        raise IntegrityError("not a tinymlops bundle (bad magic; expected b'TMLBNDL1')", member=HEADER)
    (count,) = _U32.unpack_from(view, len(MAGIC))
    if not 1 <= count <= MAX_MEMBERS:
        raise IntegrityError(f"member count {count} is out of range 1..{MAX_MEMBERS}", member=HEADER)
    pos = len(MAGIC) + _U32.size
    members: dict[str, bytes] = {}
    previous = HEADER
    for index in range(count):
        where = f"member #{index + 1} (after '{previous}')" if index else "member #1"
        if pos + _U16.size > total:
            raise IntegrityError(f"truncated: {where} name length is missing", member=HEADER)
        (name_len,) = _U16.unpack_from(view, pos)
        pos += _U16.size
        if not 1 <= name_len <= MAX_NAME_BYTES:
            raise IntegrityError(f"{where}: name length {name_len} out of range 1..{MAX_NAME_BYTES}", member=HEADER)
        if pos + name_len > total:
            raise IntegrityError(f"truncated: {where} name is cut off", member=HEADER)
        try:
            name = bytes(view[pos : pos + name_len]).decode("utf-8")
        except UnicodeDecodeError:
            raise IntegrityError(f"{where}: name is not UTF-8", member=HEADER) from None
        pos += name_len
        if not _valid_name(name):
            raise IntegrityError(f"{where}: bad member name {name!r}", member=HEADER)
        if name in members:
            raise IntegrityError(f"duplicate member '{name}'", member=name)
        if pos + _U64.size > total:
            raise IntegrityError(f"truncated: member '{name}' has no data length", member=name)
        (size,) = _U64.unpack_from(view, pos)
        pos += _U64.size
        if size > MAX_MEMBER_BYTES:
            raise IntegrityError(f"member '{name}' claims {size} bytes; the limit is {MAX_MEMBER_BYTES}", member=name)
        if size > total - pos:
            raise IntegrityError(
                f"truncated: member '{name}' claims {size} bytes but only {total - pos} remain", member=name
            )
        members[name] = bytes(view[pos : pos + size])
        pos += size
        previous = name
    if pos != total:
        raise IntegrityError(
            f"{total - pos} unexpected trailing byte(s) after the last member '{previous}'", member=HEADER
        )
    return members


__all__ = ["HEADER", "MAGIC", "MAX_BUNDLE_BYTES", "MAX_MEMBERS", "MAX_MEMBER_BYTES", "MAX_NAME_BYTES", "pack", "unpack"]
