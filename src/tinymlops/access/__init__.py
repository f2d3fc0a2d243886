"""Admin access to the control plane: API keys with scopes (server side).

A key is ``tmk_<16 hex id>_<43 base64url characters>``; only its SHA-256 is stored, so it is shown
exactly once, when created. Scopes nest: ``admin`` ⊇ ``release`` ⊇ ``read``. Keys are revocable
and record when they were last used. The bootstrap key comes from the CLI
(``tinymlops apikey create --scope admin``), which works on the workspace database directly.

Modules: :mod:`~tinymlops.access.scopes` (the scope order), :mod:`~tinymlops.access.credentials`
(bearer secrets: format, hashing, constant-time comparison; shared with device tokens),
:mod:`~tinymlops.access.schema` (the ``api_keys`` table), :mod:`~tinymlops.access.service`
(:class:`~tinymlops.access.service.ApiKeyService`).
"""
