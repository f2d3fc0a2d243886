"""Keys, signatures (Ed25519) and envelope encryption (AES-256-GCM, X25519 key wrap).

Edge-safe: this package imports only ``cryptography`` and the standard library.

* :mod:`tinymlops.crypto.keys` - key pairs, key files (0600, atomic), key ids, device identities.
* :mod:`tinymlops.crypto.signing` - detached signatures and the signature document.
* :mod:`tinymlops.crypto.envelope` - member encryption bound to bundle + name, key wrapping.
"""

from tinymlops.crypto.envelope import (
    WrappedKey,
    decrypt_member,
    encrypt_member,
    new_content_key,
    unwrap_key,
    wrap_key,
)
from tinymlops.crypto.keys import (
    DeviceKeys,
    decode_public_key,
    generate_signing_key,
    generate_wrapping_key,
    key_id,
    load_public_key,
    load_signing_key,
    load_wrapping_key,
    public_bytes,
    save_private_key,
    save_public_key,
)
from tinymlops.crypto.signing import DetachedSignature, sign, verify, verify_detached

__all__ = [
    "DetachedSignature",
    "DeviceKeys",
    "WrappedKey",
    "decode_public_key",
    "decrypt_member",
    "encrypt_member",
    "generate_signing_key",
    "generate_wrapping_key",
    "key_id",
    "load_public_key",
    "load_signing_key",
    "load_wrapping_key",
    "new_content_key",
    "public_bytes",
    "save_private_key",
    "save_public_key",
    "sign",
    "unwrap_key",
    "verify",
    "verify_detached",
    "wrap_key",
]
