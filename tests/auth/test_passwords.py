"""The password hashes of tickertape.auth.passwords, and the username and password fields
SoupBinTCP can carry."""

from __future__ import annotations

import base64

import pytest

from tickertape.auth.passwords import (
    DUMMY_HASH,
    SCRYPT_N,
    check_login_password,
    hash_password,
    normalise_password,
    normalise_username,
    verify_password,
)
from tickertape.errors import ConfigError

# One hash for the tests that only need a valid one: each costs about 30 ms.
PASSWORD = "Secret42"
HASH = hash_password(PASSWORD)


def test_hash_then_verify_round_trip() -> None:
    assert verify_password(PASSWORD, HASH)


def test_a_hash_says_how_it_was_made() -> None:
    scheme, params, salt, digest = HASH.split("$")
    assert scheme == "scrypt"
    assert params == f"n={SCRYPT_N},r=8,p=1"
    assert len(base64.b64decode(salt)) == 16
    assert len(base64.b64decode(digest)) == 32


def test_two_hashes_of_one_password_differ_by_their_salt() -> None:
    again = hash_password(PASSWORD)
    assert again != HASH
    assert verify_password(PASSWORD, again)


@pytest.mark.parametrize("spelling", ["secret42", "SECRET42", "sEcReT42"])
def test_passwords_are_case_insensitive(spelling: str) -> None:
    assert verify_password(spelling, HASH)


@pytest.mark.parametrize("wrong", ["Secret43", "Secret4", "Secret420", "x"])
def test_a_wrong_password_does_not_verify(wrong: str) -> None:
    assert not verify_password(wrong, HASH)


@pytest.mark.parametrize("odd", ["", "Secret42 ", "Secret42xyz", "Sécret42", "Secret-4"])
def test_a_password_soupbintcp_cannot_carry_does_not_verify(odd: str) -> None:
    assert not verify_password(odd, HASH)


@pytest.mark.parametrize(
    ("password", "message"),
    [
        ("", "the password is empty"),
        ("abcdefghijk", "the password is 11 characters; SoupBinTCP allows at most 10"),
        ("abc def", "characters other than letters or digits"),
        ("pässword", "characters other than letters or digits"),
    ],
)
def test_hashing_refuses_a_password_soupbintcp_cannot_carry(password: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        hash_password(password)
    if password:
        assert password not in str(caught.value)


def test_a_password_is_kept_upper_cased() -> None:
    assert normalise_password("abc123XYZ") == "ABC123XYZ"


@pytest.mark.parametrize(
    "encoded",
    [
        "",
        "bcrypt$n=16384,r=8,p=1$c2FsdHNhbHRzYWx0$" + "A" * 43 + "=",
        "scrypt$n=16384,r=8,p=1$not base64!$abc",
        "scrypt$n=1000,r=8,p=1$c2FsdHNhbHRzYWx0$" + "A" * 43 + "=",
        "scrypt$n=16777216,r=8,p=1$c2FsdHNhbHRzYWx0$" + "A" * 43 + "=",
        "scrypt$n=16384,r=8,p=1$c2FsdA==$" + "A" * 43 + "=",
        "scrypt$n=16384,r=8,p=1$c2FsdHNhbHRzYWx0$QUJD",
    ],
)
def test_verify_refuses_a_malformed_hash(encoded: str) -> None:
    with pytest.raises(ConfigError, match="password hash"):
        verify_password(PASSWORD, encoded)


# ---------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("name", "stored"), [("alice", "alice"), ("ALICE", "alice"), ("b0B9", "b0b9")]
)
def test_a_username_is_kept_in_lower_case(name: str, stored: str) -> None:
    assert normalise_username(name) == stored


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "the username is empty"),
        ("ALICEBOB", "username 'ALICEBOB' is 8 characters; SoupBinTCP allows at most 6"),
        ("al-ce", "characters other than letters or digits"),
        ("al ce", "characters other than letters or digits"),
        ("\u212aate", "characters other than letters or digits"),  # Kelvin sign: lower() is k
    ],
)
def test_a_username_soupbintcp_cannot_carry_is_refused(name: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        normalise_username(name)


def test_a_login_password_is_checked_against_its_hash_or_against_none() -> None:
    assert check_login_password("secret42", HASH)
    assert not check_login_password("Secret43", HASH)
    assert not check_login_password("Secret42", None)  # no such user: the dummy hash
    assert not check_login_password(42, HASH)
    assert not check_login_password("Sécret42", HASH)
    assert not verify_password("Secret42", DUMMY_HASH)
