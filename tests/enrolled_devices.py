"""Devices enrolled in a workspace the way the server enrols them — a signed enrolment request through
the real :class:`~tinymlops.devices.enrolment.EnrolmentService` — without an HTTP server (a plain
module: ``from enrolled_devices import enrol_device``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from tinymlops.crypto.keys import DeviceKeys
from tinymlops.devices.client import enrolment_body
from tinymlops.devices.enrolment import EnrolmentService
from tinymlops.devices.request_auth import ReceivedRequest, sign_request

ENROL_PATH = "/v1/devices/enrol"


def enrol_device(ws: Any, *, profile: str = "rpi-4", tags: Sequence[str] = ()) -> DeviceKeys:
    """A new device (fresh keys) enrolled with ``profile`` and ``tags`` through a one-time token."""
    enrolment = EnrolmentService(ws.engine, ws.targets.get)
    keys = DeviceKeys.generate()
    _, token = enrolment.create_token(ttl_s=600, tags=list(tags))
    body = json.dumps(enrolment_body(keys, token, profile)).encode()
    auth = sign_request(keys.signing, "POST", ENROL_PATH, body)
    doc = json.loads(body)
    enrolment.enrol(
        token=doc["token"],
        signing_public=doc["signing_public"],
        wrapping_public=doc["wrapping_public"],
        profile=doc["profile"],
        request=ReceivedRequest("POST", ENROL_PATH, body, tuple(auth.headers().items())),
    )
    return keys
