"""Devices: identity, enrolment and request authentication — device and server halves.

Device half (edge-safe: standard library + ``cryptography``; the agent imports these):

* :mod:`~tinymlops.devices.identity` — the device's keys, its enrolment request, what it remembers;
* :mod:`~tinymlops.devices.request_auth` — the request-signing scheme (documented there): build,
  sign, and the pure verification the server calls too;
* :mod:`~tinymlops.devices.client` — :class:`~tinymlops.devices.client.DeviceClient`, a tiny
  ``urllib`` client that enrols and makes signed or bearer requests.

Server half (SQLAlchemy; never imported by the device half):

* :mod:`~tinymlops.devices.schema` — the tables (migration 0002);
* :mod:`~tinymlops.devices.enrolment` — one-time enrolment tokens and enrolment;
* :mod:`~tinymlops.devices.service` — devices: read, revoke, authenticate requests, replay cache,
  short-lived bearer tokens.

This ``__init__`` imports nothing, so importing the device half never pulls in the server half.
"""
