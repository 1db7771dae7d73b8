"""Every value a ``tickertape`` command takes is checked when the command line is parsed:
exit status 2, one line naming the option and what it takes, no traceback, nothing
opened or sent; the same kind of value gets the same message in every command."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from tickertape.cli import argtypes
from tickertape.cli.main import build_parser, main


def refused(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """The error line ``tickertape ARGV`` stops with (it must stop with status 2)."""
    with pytest.raises(SystemExit) as stopped:
        main(list(argv))
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["serve", "--port", "99999"], "argument --port: 99999 is not a port number (0 to 65535)"),
        (["serve", "--port", "-1"], "argument --port: -1 is not a port number (0 to 65535)"),
        (["serve", "--port", "http"], "argument --port: 'http' is not a whole number"),
        (
            ["serve", "--admin-port", "70000"],
            "argument --admin-port: 70000 is not a port number (0 to 65535)",
        ),
        (
            ["serve", "--mold-request", "65536"],
            "argument --mold-request: 65536 is not a port number (0 to 65535)",
        ),
        (
            ["tail", "--port", "99999"],
            "argument --port: 99999 is not a port to connect to (1 to 65535)",
        ),
        (["tail", "--port", "0"], "argument --port: 0 is not a port to connect to (1 to 65535)"),
        (
            ["publish", "--port", "99999"],
            "argument --port: 99999 is not a port to connect to (1 to 65535)",
        ),
        (
            ["sessions", "list", "--admin-port", "99999"],
            "argument --admin-port: 99999 is not a port to connect to (1 to 65535)",
        ),
        (
            ["tail", "--mold", "239.1.1.1:99999"],
            "argument --mold: 99999 is not a port to connect to (1 to 65535)",
        ),
        (
            ["serve", "--mold", "239.1.1.1:0"],
            "argument --mold: 0 is not a port to connect to (1 to 65535)",
        ),
        (
            ["tail", "--tcp", "127.0.0.1:99999"],
            "argument --tcp: 99999 is not a port to connect to (1 to 65535)",
        ),
    ],
)
def test_ports_are_checked_when_parsing(
    capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    assert refused(capsys, *argv).endswith(expected)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["tail", "--count", "-1"], "argument --count: -1: must be at least 1"),
        (["tail", "--count", "0"], "argument --count: 0: must be at least 1"),
        (["tail", "--count", "many"], "argument --count: 'many' is not a whole number"),
        (["serve", "--demo-count", "-5"], "argument --demo-count: -5: must be at least 1"),
        (["serve", "--max-connections", "0"], "argument --max-connections: 0: must be at least 1"),
        (["serve", "--demo", "0"], "argument --demo: 0 is not a positive number"),
        (["serve", "--demo", "nan"], "argument --demo: 'nan' is not a finite number"),
        (["serve", "--demo", "fast"], "argument --demo: 'fast' is not a number"),
        (["serve", "--idle-timeout", "-2"], "argument --idle-timeout: -2 is not a positive number"),
        (["publish", "--timeout", "0"], "argument --timeout: 0 is not a positive number"),
        (
            ["serve", "--mold", "239.1.1.1:5000", "--mold-eos-seconds", "-1"],
            "argument --mold-eos-seconds: -1 is negative: 0 or more",
        ),
        (["serve", "--mold-ttl", "256"], "argument --mold-ttl: 256: a TTL is 0 to 255"),
        (
            ["serve", "--archive-after", "x"],
            "argument --archive-after: 'x' is not a whole number",
        ),
    ],
)
def test_numbers_are_checked_when_parsing(
    capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    assert refused(capsys, *argv).endswith(expected)


def test_from_gets_the_same_message_in_tail_and_export(
    capsys: pytest.CaptureFixture[str],
) -> None:
    tail = refused(capsys, "tail", "--from", "-5")
    export = refused(capsys, "sessions", "export", "2026120701", "--from", "-5")
    assert tail.endswith(
        "argument --from: -5: sequence numbers start at 1 (0: from the next message published)"
    )
    assert export.endswith("argument --from: -5: sequence numbers start at 1")
    assert refused(capsys, "tail", "--from", "one").endswith(
        "argument --from: 'one' is not a whole number"
    )
    assert refused(capsys, "sessions", "export", "2026120701", "--to", "0").endswith(
        "argument --to: 0: sequence numbers start at 1"
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["tail", "--session", "123"],
        ["sessions", "show", "123"],
        ["sessions", "verify", "123"],
        ["sessions", "export", "123"],
        ["sessions", "archive", "123"],
    ],
)
def test_a_session_id_is_explained_wherever_it_is_given(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    option = "--session" if argv[0] == "tail" else "ID"
    assert refused(capsys, *argv).endswith(
        f"argument {option}: '123' is not a session id: ids are YYYYMMDDNN, the date and a "
        "two-digit counter, such as 2026112901"
    )


def test_a_session_id_with_an_impossible_date_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    assert "argument --session: session id '2026133101' has an invalid date" in refused(
        capsys, "tail", "--session", "2026133101"
    )


def test_export_checks_its_range_before_reading_the_session(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # No data directory at all: the range is refused before anything is looked up.
    missing = tmp_path / "nowhere"
    line = refused(
        capsys,
        "sessions",
        "export",
        "2026120701",
        "--data",
        str(missing),
        "--from",
        "5",
        "--to",
        "3",
    )
    assert line.endswith("--to 3 is before --from 5")
    assert not missing.exists()


def test_tail_with_a_valid_session_and_blank_default_still_parses() -> None:
    args = build_parser().parse_args(["tail", "--session", "2026120701", "--from", "0"])
    assert (args.session, args.seq) == ("2026120701", 0)
    args = build_parser().parse_args(["tail"])
    assert args.session is None  # main() makes it "": the active session


@pytest.mark.parametrize("verb", ["serve", "tail"])
def test_a_port_out_of_range_is_one_line_not_a_traceback(verb: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tickertape", verb, "--port", "99999"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "session writer" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"tickertape {verb}: error: argument --port: 99999 is not a port "
        + ("number (0 to 65535)" if verb == "serve" else "to connect to (1 to 65535)")
    )
    assert list(tmp_path.iterdir()) == []  # serve made no data directory


@pytest.mark.parametrize("module", ["tickertape", "tickertape.cli"])
def test_archive_after_that_is_not_a_number_names_the_option(module: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", module, "serve", "--archive-after", "x"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "tickertape serve: error: argument --archive-after: 'x' is not a whole number"
    )
    assert list(tmp_path.iterdir()) == []  # serve made no data directory


def _validated_options() -> list[tuple[list[str], str]]:
    """Every option of serve, publish, tail, sessions and users whose value one of
    :mod:`tickertape.cli.argtypes`' validators checks: the words before it, its name."""
    found: list[tuple[list[str], str]] = []

    def walk(parser: argparse.ArgumentParser, words: list[str]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    if name != "bench":  # tickertape.cli.bench validates its own options
                        walk(sub, [*words, name])
            elif action.option_strings and getattr(action.type, "__module__", None) == (
                argtypes.__name__
            ):
                found.append((words, action.option_strings[-1]))

    walk(build_parser(), [])
    return found


@pytest.mark.parametrize(
    ("words", "option"), _validated_options(), ids=lambda v: v if isinstance(v, str) else None
)
def test_a_value_of_the_wrong_kind_is_refused_naming_the_option_not_a_function(
    capsys: pytest.CaptureFixture[str], words: list[str], option: str
) -> None:
    """argparse names the validator (``invalid _whole value``) when one raises anything
    but ArgumentTypeError: every validator's error must name the option and say why."""
    line = refused(capsys, *words, option, "x y.")  # wrong for every kind of value
    assert line.startswith(f"tickertape {' '.join(words)}: error: argument {option}: ")
    assert "invalid" not in line


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["tail", "--server", "127.0.0.1"],
            "argument --server: '127.0.0.1': expected HOST:PORT[,HOST:PORT...], such as "
            "10.0.0.1:7300",
        ),
        (
            ["publish", "--server", "a:1,,b:2"],
            "argument --server: 'a:1,,b:2': an empty server between commas; expected "
            "HOST:PORT[,HOST:PORT...]",
        ),
        (
            ["tail", "--server", "a:1,b:99999"],
            "argument --server: 99999 is not a port to connect to (1 to 65535)",
        ),
        (
            ["publish", "--server", "::1:7300"],
            "argument --server: '::1:7300': an IPv6 address goes in brackets: [::1]:7300",
        ),
        (
            ["tail", "--server", "my host:7300"],
            "argument --server: 'my host:7300': 'my host' is not a host name or address",
        ),
        (
            ["publish", "--server", "a:1", "--port", "2"],
            "give --server, or --host and --port, not both",
        ),
        (
            ["tail", "--host", "b", "--server", "a:1"],
            "give --server, or --host and --port, not both",
        ),
        (["tail", "--server", "a:1,b:2", "--server", "a:1"], "--server names a:1 twice"),
        (
            ["tail", "--mold", "239.1.1.1:5000", "--request", "127.0.0.1:5001", "--server", "a:1"],
            "--server is for SoupBinTCP, not --mold",
        ),
    ],
)
def test_servers_are_checked_when_parsing(
    capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    assert refused(capsys, *argv).endswith(expected)


def test_servers_are_a_list_in_the_order_given() -> None:
    assert argtypes.servers("a:1, [::1]:2,10.0.0.3:7300") == [
        ("a", 1),
        ("::1", 2),
        ("10.0.0.3", 7300),
    ]
    args = build_parser().parse_args(["tail", "--server", "a:1,b:2", "--server", "c:3"])
    assert args.server == [("a", 1), ("b", 2), ("c", 3)]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["serve", "--cluster", "nats://127.0.0.1:4222", "--cluster-name", "a.b"],
            "argument --cluster-name: 'a.b': a cluster's name is letters, digits, '-' and '_' "
            "(it names JetStream's stream, subject and bucket)",
        ),
        (
            ["serve", "--cluster", "127.0.0.1:4222"],
            "argument --cluster: '127.0.0.1:4222': expected nats://HOST:PORT (several "
            "separated by commas)",
        ),
        (
            ["serve", "--cluster-name", "east"],
            "--cluster-name needs --cluster",
        ),
    ],
)
def test_cluster_options_are_checked_when_parsing(
    capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    assert refused(capsys, *argv).endswith(expected)
