"""The device's identity on disk: keys created once, the enrolment record written atomically and
read strictly."""

from __future__ import annotations

import json
import stat

import pytest

from tinymlops.devices.identity import ENROLMENT_FILE, EnrolmentState, enrolment_body, load_or_create_keys
from tinymlops.errors import InvalidInputError, UsageError


def test_keys_are_created_once_and_kept_private(tmp_path) -> None:
    keys = load_or_create_keys(tmp_path / "id")
    again = load_or_create_keys(tmp_path / "id")
    assert again.device_id == keys.device_id and again.wrapping_key_id == keys.wrapping_key_id
    assert stat.S_IMODE((tmp_path / "id").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "id" / "device.ed25519").stat().st_mode) == 0o600


def test_enrolment_state_round_trips_and_is_parsed_strictly(tmp_path) -> None:
    assert EnrolmentState.load(tmp_path) is None
    state = EnrolmentState("http://127.0.0.1:8470", "0123456789abcdef", "rpi-4", "2026-01-01T00:00:00Z", ("eu",))
    path = state.save(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert EnrolmentState.load(tmp_path) == state
    doc = json.loads(path.read_text())
    for broken, words in (
        ({**doc, "extra": 1}, "exactly the fields"),
        ({**doc, "version": 2}, "unsupported version"),
        ({**doc, "device_id": ""}, "device_id"),
        ({**doc, "tags": "eu"}, "tags"),
        ([], "JSON object"),
    ):
        path.write_text(json.dumps(broken))
        with pytest.raises(InvalidInputError, match=words):
            EnrolmentState.load(tmp_path)
    path.write_bytes(b"{not json")
    with pytest.raises(InvalidInputError, match="not valid JSON"):
        EnrolmentState.load(tmp_path)
    assert (tmp_path / ENROLMENT_FILE).exists()


def test_enrolment_body_needs_a_token_and_a_profile(tmp_path) -> None:
    keys = load_or_create_keys(tmp_path)
    body = enrolment_body(keys, "tme_x", {"name": "custom"})
    assert set(body) == {"token", "signing_public", "wrapping_public", "profile"}
    with pytest.raises(UsageError):
        enrolment_body(keys, "", "rpi-4")
    with pytest.raises(UsageError):
        enrolment_body(keys, "tme_x", "")
