"""Malformed metadata: whatever bytes arrive instead of JSON metadata are refused cleanly.

Never another exception, never an offer, never a change to the device's trusted metadata.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulators.tuf_server import Attacker, assert_refused, put, trusted_files, world
from tinymlops.errors import SpecError, UnsupportedVersionError, UpdateRefusedError
from tinymlops.spec.update import device_target_path

PATH = device_target_path("dev-a")


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json at all",
        b'{"signed": ',
        b"[]",
        b"null",
        b'{"signed": {"_type": "timestamp", "version": "two"}, "signatures": []}',
        b"\xff\xfe\x00garbage",
    ],
)
def test_a_malformed_timestamp_is_refused(tmp_path: Path, body: bytes) -> None:
    with world(tmp_path) as w:
        put(w.repo, PATH, b"payload")
        client = w.client()
        assert client.check(PATH) is not None
        w.server.serve("metadata/timestamp.json", body)
        err = assert_refused(client, PATH, "malformed-metadata")
        assert err.member == "timestamp.json" and "not valid TUF metadata" in err.message
        w.server.reset()
        assert client.check(PATH) is not None


def test_a_malformed_next_root_is_refused(tmp_path: Path) -> None:
    with world(tmp_path) as w:
        put(w.repo, PATH, b"payload")
        client = w.client()
        assert client.check(PATH) is not None
        w.server.serve("metadata/2.root.json", b'{"this is": "not a root"}')
        err = assert_refused(client, PATH, "malformed-metadata")
        assert err.member == "2.root.json"
        w.server.reset()
        assert client.check(PATH) is not None


def test_metadata_of_the_wrong_type_is_refused(tmp_path: Path) -> None:
    with world(tmp_path) as w:
        put(w.repo, PATH, b"payload")
        client = w.client()
        assert client.check(PATH) is not None
        snap_name = Attacker(w.repo).current("snapshot")[0]
        w.server.serve("metadata/timestamp.json", (w.repo.metadata_dir / snap_name).read_bytes())
        err = assert_refused(client, PATH, "invalid-metadata")
        assert "Expected 'timestamp'" in err.message


def test_custom_info_that_does_not_parse_is_a_spec_error(tmp_path: Path) -> None:
    """Signed by the real targets key, but from a newer, incompatible publisher."""
    from simulators.tuf_server import info_for

    with world(tmp_path) as w:
        client = w.client()
        with w.repo.edit() as edit:
            p = edit.put(PATH, b"payload", info_for(b"payload"))
            edit.bins[p.role].signed.targets[PATH].unrecognized_fields["custom"]["spec_version"] = "2.0"
        with pytest.raises(UnsupportedVersionError):
            client.check(PATH)
        with w.repo.edit() as edit:
            p = edit.put(PATH, b"payload", info_for(b"payload"))
            edit.bins[p.role].signed.targets[PATH].unrecognized_fields["custom"] = "not an object"
        with pytest.raises(SpecError):
            client.check(PATH)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
bodies = (
    st.binary(max_size=300)
    | json_values.map(lambda v: json.dumps(v).encode())
    | st.builds(
        lambda signed: json.dumps({"signed": signed, "signatures": []}).encode(),
        st.dictionaries(st.sampled_from(["_type", "version", "expires", "spec_version", "meta"]), json_values),
    )
)


def test_any_bytes_served_as_timestamp_are_refused(tmp_path: Path) -> None:
    with world(tmp_path) as w:
        put(w.repo, PATH, b"payload")
        client = w.client()
        assert client.check(PATH) is not None
        before = trusted_files(client)

        @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
        @given(body=bodies)
        def attack(body: bytes) -> None:
            w.server.serve("metadata/timestamp.json", body)
            with pytest.raises(UpdateRefusedError) as err:
                client.check(PATH)
            assert err.value.attack in ("malformed-metadata", "invalid-metadata", "untrusted-signature")
            assert trusted_files(client) == before

        attack()
        w.server.reset()
        assert client.check(PATH) is not None
