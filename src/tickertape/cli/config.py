"""``tickertape serve --config FILE.toml``, ``--check-config``, and secrets kept off the
command line (``--password-file``, ``TICKERTAPE_PASSWORD``, a prompt).

A configuration file is a TOML table of ``serve``'s options: each key is an option's
name without its leading ``--`` (``admin-port`` or ``admin_port``), each value of the
TOML type the option takes: an integer, a number (a float or an integer), true/false
for a switch, a string for the rest, and a list for an option that may be repeated.
Options on the command line win over the file. An unknown key, or a value of the
wrong type, is an error naming the key and the file."""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import json
import os
import sys
import tomllib
import typing
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from tickertape.errors import ConfigError
from tickertape.sources.upstream import Upstream

NOT_IN_A_FILE: Final = frozenset({"help", "config", "check_config"})
"""Options a configuration file cannot hold."""
PASSWORD_VARIABLE: Final = "TICKERTAPE_PASSWORD"
UPSTREAM_PASSWORD_VARIABLE: Final = "TICKERTAPE_UPSTREAM_PASSWORD"
MASK: Final = "********"


def add_config_options(serve: argparse.ArgumentParser) -> None:
    """``--config`` and ``--check-config``."""
    group = serve.add_argument_group("configuration file")
    group.add_argument(
        "--config",
        type=Path,
        metavar="FILE.toml",
        help="read serve's options from this TOML file, one key an option without its "
        "'--' (port = 9000, demo = 10.5, allow-anonymous = true, durability = \"always\"); "
        "options on the command line win over the file",
    )
    group.add_argument(
        "--check-config",
        action="store_true",
        help="check the options (and --config file), print the effective configuration "
        "as TOML with secrets masked, and exit: 0 if it is good, 2 if not",
    )


def add_password_file_option(parser: argparse.ArgumentParser) -> None:
    """``--password-file`` for a client command."""
    parser.add_argument(
        "--password-file",
        type=Path,
        metavar="FILE",
        help="read the password from FILE's first line (keeps it out of the process "
        f"list); without --password or this, ${PASSWORD_VARIABLE} is used, else it is "
        "asked for when --user is given on a terminal",
    )


def _kind(action: argparse.Action) -> type:
    """The TOML type an option's value has in a file: bool, int, float or str."""
    if action.nargs == 0:
        return bool
    convert = action.type
    if convert is int or convert is float:
        return convert
    if callable(convert) and not isinstance(convert, type):
        try:
            returned = typing.get_type_hints(convert).get("return")
        except Exception:  # an annotation that does not resolve: take a string
            returned = None
        if returned is int or returned is float:
            return returned
    return str


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The options a file may set, by every name a key may have."""
    found: dict[str, argparse.Action] = {}
    for action in parser._actions:
        if action.dest in NOT_IN_A_FILE or not action.option_strings:
            continue
        for option in action.option_strings:
            if option.startswith("--"):
                found[option[2:]] = action
                found[option[2:].replace("-", "_")] = action
    return found


def _describe(kind: type) -> str:
    return {
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "a string",
    }[kind]


def _convert(action: argparse.Action, key: str, value: object, where: str) -> object:
    """One value of the file as the option takes it; ConfigError if it cannot be."""
    kind = _kind(action)
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {key} is a switch: true or false, not {value!r}")
        return action.const if value else action.default
    if isinstance(value, bool) or not (
        (kind is int and isinstance(value, int))
        or (kind is float and isinstance(value, int | float))
        or (kind is str and isinstance(value, str))
    ):
        raise ConfigError(f"{where}: {key} takes {_describe(kind)}, not {value!r}")
    convert = action.type
    try:
        result = value if convert is None else convert(str(value))  # type: ignore[operator]
    except (argparse.ArgumentTypeError, ValueError, TypeError, ConfigError) as exc:
        raise ConfigError(f"{where}: {key} = {value!r}: {exc}") from None
    if action.choices is not None and result not in action.choices:
        choices = ", ".join(str(c) for c in action.choices)
        raise ConfigError(f"{where}: {key} = {value!r}: not one of {choices}")
    return result


def read_config(parser: argparse.ArgumentParser, path: Path) -> dict[str, object]:
    """The options ``path`` sets, by their ``dest``, converted and checked as the
    command line would be; ConfigError naming the file (and the key) if not."""
    try:
        with path.open("rb") as file:
            table = tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"cannot read the configuration file {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    options = _options(parser)
    values: dict[str, object] = {}
    keys: dict[str, str] = {}
    for key, value in table.items():
        action = options.get(key)
        if action is None:
            known = sorted(
                {o[2:] for a in options.values() for o in a.option_strings if o[:2] == "--"}
            )
            raise ConfigError(
                f"{path}: unknown key {key!r}: not an option of serve (known: {', '.join(known)})"
            )
        if action.dest in values:
            raise ConfigError(f"{path}: {key} is given twice (as {keys[action.dest]} too)")
        keys[action.dest] = key
        if isinstance(action, argparse._AppendAction):
            items = value if isinstance(value, list) else None
            if items is None:
                raise ConfigError(f"{path}: {key} may be repeated: give a list, not {value!r}")
            values[action.dest] = [_convert(action, key, item, str(path)) for item in items]
        else:
            if isinstance(value, list | dict):
                raise ConfigError(f"{path}: {key} takes one value, not {value!r}")
            values[action.dest] = _convert(action, key, value, str(path))
    return values


def given_on_command_line(parser: argparse.ArgumentParser, words: Sequence[str]) -> set[str]:
    """The ``dest`` of every option of ``parser`` that ``words`` give."""
    actions = [a for a in parser._actions if a.option_strings]
    # Defaults are not applied over attributes the namespace already has: whatever is
    # no longer an empty _Unset was given (an appending option copies it, then appends).
    given = argparse.Namespace(**{action.dest: _Unset() for action in actions})
    parser.parse_known_args(list(words), namespace=given)
    return {
        a.dest
        for a in actions
        if not (isinstance(value := getattr(given, a.dest), _Unset) and not value)
    }


class _Unset(list[object]):
    """Stands for an option not given, in :func:`given_on_command_line`."""


def apply_config(
    parser: argparse.ArgumentParser, path: Path, words: Sequence[str]
) -> dict[str, object]:
    """Make what ``path`` sets the defaults of ``parser`` (so that the command line
    ``words`` win when parsed again); what it set, by ``dest``."""
    values = read_config(parser, path)
    given = given_on_command_line(parser, words)
    for dest in given:  # the command line's win (a repeated option is not added to)
        values.pop(dest, None)
    for group in parser._mutually_exclusive_groups:
        members = [a.dest for a in group._group_actions]
        if any(dest in given for dest in members):  # the command line chose
            for dest in members:
                values.pop(dest, None)
        in_file = [dest for dest in members if dest in values]
        if len(in_file) > 1:
            names = " and ".join(dest.replace("_", "-") for dest in in_file)
            raise ConfigError(f"{path}: {names} cannot go together")
    parser.set_defaults(**values)
    return values


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    if isinstance(value, tuple):
        return _toml(":".join(str(part) for part in value))
    return json.dumps(str(value), ensure_ascii=False)


def render_config(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    masks: Mapping[str, Callable[[Any], str]],
) -> str:
    """The effective value of every option of ``parser`` as a TOML file (one that
    ``--config`` takes back, once the masked secrets are put in); an option not set is
    a comment. ``masks`` renders the secrets, by ``dest``."""
    lines = []
    for action in parser._actions:
        if action.dest in NOT_IN_A_FILE or not action.option_strings:
            continue
        key = next(o[2:] for o in action.option_strings if o.startswith("--"))
        value = getattr(args, action.dest, None)
        if value is None:
            lines.append(f"# {key} is not set")
            continue
        if action.dest in masks:
            value = masks[action.dest](value)
        lines.append(f"{key} = {_toml(value)}")
    return "\n".join(lines) + "\n"


def read_secret_file(path: Path, what: str) -> str:
    """The first line of ``path``, stripped; ConfigError if it cannot be read or is blank."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the {what} file {path}: {exc}") from None
    secret = lines[0].strip() if lines else ""
    if not secret:
        raise ConfigError(f"the {what} file {path} is empty")
    return secret


def client_password(
    user: str,
    password: str,
    password_file: Path | None,
    environ: Mapping[str, str] = os.environ,
) -> str:
    """A client's password: ``--password``, else the first line of ``--password-file``,
    else ``$TICKERTAPE_PASSWORD``, else, when ``user`` is given and stdin is a terminal,
    asked for; else none."""
    if password:
        return password
    if password_file is not None:
        return read_secret_file(password_file, "password")
    if PASSWORD_VARIABLE in environ:
        return environ[PASSWORD_VARIABLE]
    if user and sys.stdin.isatty():
        return getpass.getpass(f"password for {user}: ")
    return ""


def mask_url(url: str) -> str:
    """An ``--upstream`` URL with its password masked."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    masked = [(k, MASK if k == "password" else v) for k, v in query]
    return parts._replace(query=urllib.parse.urlencode(masked, safe="*")).geturl()


def upstream_from(
    url: str, password_file: Path | None, environ: Mapping[str, str] = os.environ
) -> Upstream:
    """``--upstream``, its password from ``--upstream-password-file`` or, when the URL
    has none, ``$TICKERTAPE_UPSTREAM_PASSWORD``."""
    upstream = Upstream.parse(url)
    if password_file is not None:
        password = read_secret_file(password_file, "upstream password")
    else:
        password = upstream.password or environ.get(UPSTREAM_PASSWORD_VARIABLE, "")
    return dataclasses.replace(upstream, password=password)
