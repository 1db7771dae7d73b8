"""SoupBinTCP's credential fields, and the scrypt hashes of passwords.

SoupBinTCP's Username (6) and Password (10) fields are alphanumeric, case-insensitive
and space padded: a name is 1 to 6 ASCII letters or digits, kept in lower case; a
password is 1 to 10 ASCII letters or digits, hashed upper-cased, so that ``secret`` and
``SECRET`` are the same password. Only an scrypt hash is stored, never the password:
``scrypt$n=16384,r=8,p=1$<salt, base64>$<hash, base64>``.

Checking a password is CPU bound (one scrypt, about 30 ms: see :data:`SCRYPT_N`),
releases the GIL while hashing, and is safe to call from several threads at once.

Not here: users and their roles (:mod:`tickertape.auth.user`), the users file
(:mod:`tickertape.auth.usersfile`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Final

from tickertape.errors import ConfigError

USERNAME_LENGTH: Final = 6
PASSWORD_LENGTH: Final = 10

SCRYPT_N: Final = 2**14
"""scrypt's cost: one hash or verification takes about 28 ms of one core (measured on a
2-core build machine) and 16 MiB of memory (128 * r * n bytes)."""
SCRYPT_R: Final = 8
SCRYPT_P: Final = 1
SALT_BYTES: Final = 16
HASH_BYTES: Final = 32

MAX_SCRYPT_MEMORY: Final = 256 << 20
"""A hash in a users file that needs more memory than this to verify is refused on
load: one login must not be able to take a server's memory."""

_HASH_FORMAT: Final = re.compile(
    r"scrypt\$n=(?P<n>[0-9]{1,8}),r=(?P<r>[0-9]{1,3}),p=(?P<p>[0-9]{1,3})"
    r"\$(?P<salt>[A-Za-z0-9+/]+={0,2})\$(?P<hash>[A-Za-z0-9+/]+={0,2})"
)


# ---------------------------------------------------------------------------- the fields


def is_alphanumeric(text: str) -> bool:
    """Only ASCII letters and digits (what SoupBinTCP's Username and Password carry)."""
    return text.isascii() and text.isalnum()


def normalise_username(name: str) -> str:
    """``name`` as stored: lower case. :class:`ConfigError` if SoupBinTCP cannot carry it."""
    _check_field(name, "the username", f"username {name!r}", USERNAME_LENGTH)
    return name.lower()


def normalise_password(password: str) -> str:
    """``password`` as hashed: upper case. :class:`ConfigError` if SoupBinTCP cannot carry
    it; the message never quotes the password."""
    _check_field(password, "the password", "the password", PASSWORD_LENGTH)
    return password.upper()


def _check_field(value: str, empty: str, named: str, limit: int) -> None:
    """A SoupBinTCP username or password field: 1 to ``limit`` ASCII letters or digits.
    ``empty`` and ``named`` say what it is in the messages."""
    rule = f"SoupBinTCP allows 1 to {limit} letters or digits"
    if not value:
        raise ConfigError(f"{empty} is empty; {rule}")
    if len(value) > limit:
        raise ConfigError(
            f"{named} is {len(value)} characters; SoupBinTCP allows at most {limit} letters "
            "or digits"
        )
    if not is_alphanumeric(value):
        raise ConfigError(f"{named} has characters other than letters or digits; {rule}")


# ---------------------------------------------------------------------------- hashing


@dataclass(frozen=True, slots=True)
class _Scrypt:
    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    @property
    def maxmem(self) -> int:
        """OpenSSL's measure of the memory a hash takes (its limit must be above it)."""
        return 128 * self.r * (self.n + self.p + 2) + (1 << 20)

    def derive(self, normalised: str) -> bytes:
        return hashlib.scrypt(
            normalised.encode("ascii"),
            salt=self.salt,
            n=self.n,
            r=self.r,
            p=self.p,
            maxmem=self.maxmem,
            dklen=len(self.digest),
        )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _parse_hash(encoded: str) -> _Scrypt:
    """The parts of an encoded hash; :class:`ConfigError` saying what is wrong with it."""
    shape = "scrypt$n=N,r=R,p=P$SALT$HASH"
    match = _HASH_FORMAT.fullmatch(encoded) if isinstance(encoded, str) else None
    if match is None:
        raise ConfigError(f"the password hash is not of the form {shape}")
    n, r, p = int(match["n"]), int(match["r"]), int(match["p"])
    if n < 2 or n & (n - 1):
        raise ConfigError(f"the password hash's n={n} is not a power of 2")
    if not 1 <= r <= 64 or not 1 <= p <= 16:
        raise ConfigError(f"the password hash's r={r}, p={p}: r must be 1 to 64, p 1 to 16")
    if 128 * r * n > MAX_SCRYPT_MEMORY:
        raise ConfigError(
            f"the password hash's n={n}, r={r} need {128 * r * n >> 20} MiB to verify, "
            f"more than {MAX_SCRYPT_MEMORY >> 20} MiB"
        )
    try:
        salt = base64.b64decode(match["salt"], validate=True)
        digest = base64.b64decode(match["hash"], validate=True)
    except binascii.Error:
        raise ConfigError(f"the password hash's salt or hash is not base64 ({shape})") from None
    if len(salt) < 8:
        raise ConfigError(f"the password hash's salt is {len(salt)} bytes: at least 8 are needed")
    if not 16 <= len(digest) <= 64:
        raise ConfigError(f"the password hash is {len(digest)} bytes: 16 to 64 are allowed")
    return _Scrypt(n, r, p, salt, digest)


def check_hash(encoded: str) -> None:
    """:class:`ConfigError` saying what is wrong if ``encoded`` is not a hash
    :func:`hash_password` could make (with any cost a server can afford)."""
    _parse_hash(encoded)


def hash_password(password: str) -> str:
    """A new scrypt hash of ``password`` (case-insensitive), with a random salt:
    ``scrypt$n=16384,r=8,p=1$<salt>$<hash>``. :class:`ConfigError` if SoupBinTCP cannot
    carry the password."""
    normalised = normalise_password(password)
    params = _Scrypt(
        SCRYPT_N, SCRYPT_R, SCRYPT_P, secrets.token_bytes(SALT_BYTES), bytes(HASH_BYTES)
    )
    digest = params.derive(normalised)
    return f"scrypt$n={params.n},r={params.r},p={params.p}${_b64(params.salt)}${_b64(digest)}"


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` (case-insensitive) is the one ``encoded`` was made from,
    compared in constant time. False for a password SoupBinTCP cannot carry, at once;
    :class:`ConfigError` if ``encoded`` is not a hash :func:`hash_password` could make."""
    params = _parse_hash(encoded)
    try:
        normalised = normalise_password(password)
    except ConfigError:
        return False
    return hmac.compare_digest(params.derive(normalised), params.digest)


DUMMY_HASH: Final = (
    f"scrypt$n={SCRYPT_N},r={SCRYPT_R},p={SCRYPT_P}"
    f"${_b64(secrets.token_bytes(SALT_BYTES))}${_b64(secrets.token_bytes(HASH_BYTES))}"
)
"""What an unknown user's password is checked against, so that a login takes as long
whether the user exists or not. No password hashes to it (it was never made from one)."""
_DUMMY_PASSWORD: Final = "X" * PASSWORD_LENGTH


def check_login_password(password: object, encoded: str | None) -> bool:
    """Whether ``password`` (case-insensitive) is the one ``encoded`` was made from, for
    a login: ``encoded`` is None for a user that does not exist. One scrypt verification
    (against :data:`DUMMY_HASH` for no user, with a stand-in for a password SoupBinTCP
    cannot carry), whatever the input, so that the time taken does not tell.
    :class:`ConfigError` if ``encoded`` is not a valid hash."""
    try:
        normalised = normalise_password(password) if isinstance(password, str) else None
    except ConfigError:
        normalised = None
    matches = verify_password(normalised or _DUMMY_PASSWORD, encoded or DUMMY_HASH)
    return encoded is not None and normalised is not None and matches
