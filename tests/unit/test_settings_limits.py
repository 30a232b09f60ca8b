"""Bad numbers: every numeric flag and RUNTIME_* variable, and Settings built in code.

Non-finite values (nan, inf, -inf, 1e309) and numbers out of range get one line naming
the setting as it was given (the flag, or the variable) with its range, and status 2;
never a traceback, never a server that starts and breaks later (``--connection-timeout
inf`` used to end the serving loop at the first connection; ``--liveness-timeout nan``
started a server whose /livez said stalled forever).
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any, NoReturn

import pytest
from _proc import ROOT, env

from runtime import cli
from runtime.config import LIMITS, MAX_SECONDS, ConfigError, Settings, settings_from

NON_FINITE = ["nan", "inf", "-inf", "1e309", "-1e309", "NaN", "+Infinity"]
SECONDS = sorted(name for name, limit in LIMITS.items() if limit.seconds)
COUNTS = sorted(name for name, limit in LIMITS.items() if not limit.seconds)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _variable(name: str) -> str:
    return "RUNTIME_" + name.upper()


def _too_big(name: str) -> str:
    high = LIMITS[name].high
    return str(int(high) + 1) if name in COUNTS else repr(high * 2)


def _too_small(name: str) -> str:
    limit = LIMITS[name]
    if name in COUNTS:
        return str(int(limit.low) - 1)
    return repr(limit.low) if limit.above else repr(limit.low - 0.5 if limit.low else -1.0)


# (setting, text, what the line says after the rule): every numeric setting with every
# non-finite value (counts: they are not whole numbers at all) and both ends of its range.
CASES = [
    *[(name, text, "(not a finite number)") for name in SECONDS for text in NON_FINITE],
    *[(name, text, "is not a whole number") for name in COUNTS for text in ("nan", "inf", "1e309")],
    *[(name, _too_big(name), "") for name in LIMITS],
    *[(name, _too_small(name), "") for name in LIMITS],
    *[(name, "99999999999999999999", "") for name in COUNTS],
]


@pytest.fixture
def no_serving(monkeypatch: pytest.MonkeyPatch) -> None:
    """An accepted value must fail the test at once, not start a server that never ends."""

    def build(*_args: Any, **_kwargs: Any) -> NoReturn:
        raise AssertionError("the bad value was accepted: the runtime went on to build")

    monkeypatch.setattr(cli, "build", build)


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.usefixtures("no_serving")
@pytest.mark.parametrize(("name", "text", "says"), CASES)
def test_a_bad_number_in_a_flag_is_one_line_naming_the_flag_and_status_2(
    name: str, text: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # "--flag=-inf": "--flag -inf" reads as a missing value to argparse's defaults (below).
    assert cli.main([f"{_flag(name)}={text}", "--admin", "off"], {}) == 2
    line = _one_line(capsys)
    assert line.startswith(f"runtime: error: {_flag(name)}: "), line
    assert LIMITS[name].rule() in line  # the fix: the range
    assert text in line and says in line


@pytest.mark.usefixtures("no_serving")
@pytest.mark.parametrize(("name", "text", "says"), CASES)
def test_a_bad_number_in_a_variable_is_one_line_naming_the_variable_and_status_2(
    name: str, text: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["--admin", "off"], {_variable(name): text}) == 2
    line = _one_line(capsys)
    assert line.startswith(f"runtime: error: {_variable(name)}: "), line
    assert LIMITS[name].rule() in line
    assert text in line and says in line


@pytest.mark.usefixtures("no_serving")
@pytest.mark.parametrize("text", ["-inf", "-1e309", "-1", "-0.5", "-1e3", "-nan"])
def test_a_negative_number_after_a_flag_is_its_value(
    text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["--drain-delay", text, "--admin", "off"], {}) == 2
    line = _one_line(capsys)
    assert line.startswith("runtime: error: --drain-delay: must be at least 0 and at most"), line


@pytest.mark.usefixtures("no_serving")
@pytest.mark.parametrize(
    ("argv", "environ", "line"),
    [
        (["--workers", "many"], {}, "--workers: 'many' is not a whole number; it must be at least"),
        (["--poll-interval", "soon"], {}, "--poll-interval: 'soon' is not a number; it must be"),
        ([], {"RUNTIME_BACKLOG": ""}, "RUNTIME_BACKLOG: '' is not a whole number"),
        ([], {"RUNTIME_BACKLOG": "9" * 5000}, "RUNTIME_BACKLOG: '99999999"),  # int() refuses
        ([], {"RUNTIME_ACCESS_LOG": "maybe"}, "RUNTIME_ACCESS_LOG: 'maybe' is not on or off"),
    ],
)
def test_text_that_is_no_number_is_one_short_line(
    argv: list[str], environ: dict[str, str], line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main([*argv, "--admin", "off"], environ) == 2
    got = _one_line(capsys)
    assert got.startswith(f"runtime: error: {line}"), got
    assert len(got) < 200  # a 5000-digit value is cut short


@pytest.mark.parametrize(
    ("argv", "environ", "line"),
    [
        # An idle loop beats once per poll interval: /livez would fail a healthy server.
        (["--liveness-timeout", "0.5"], {}, "--liveness-timeout: must be at least twice "
                                            "--poll-interval (0.5; /livez would say stalled"),
        (["--poll-interval", "20"], {}, "--poll-interval: must be at most half of "
                                        "--liveness-timeout (30;"),
        ([], {"RUNTIME_POLL_INTERVAL": "20"}, "RUNTIME_POLL_INTERVAL: must be at most half of"),
        # ... and an idle pre-fork worker would be aborted as hung.
        (["--mode", "prefork", "--worker-timeout", "0.6"], {},
         "--worker-timeout: must be at least twice --poll-interval (0.5; idle workers"),
        (["--mode", "prefork", "--workers", "2", "--max-children", "2000"], {},
         "--max-children: must be at most 1024 in --mode prefork"),
        ([], {"RUNTIME_MODE": "prefork", "RUNTIME_MAX_CHILDREN": "1025"},
         "RUNTIME_MAX_CHILDREN: must be at most 1024 in --mode prefork"),
    ],
)  # fmt: skip
@pytest.mark.usefixtures("no_serving")
def test_settings_that_break_each_other_are_one_line_naming_the_one_given(
    argv: list[str], environ: dict[str, str], line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main([*argv, "--admin", "off"], environ) == 2
    got = _one_line(capsys)
    assert got.startswith(f"runtime: error: {line}"), got


@pytest.mark.parametrize(("name", "text", "says"), CASES)
def test_settings_built_in_code_refuse_the_same_values(name: str, text: str, says: str) -> None:
    # A count given as a float (nan, inf) is no whole number: refused for its type.
    value = float(text) if name in SECONDS or says else int(text)
    with pytest.raises(ConfigError) as info:
        Settings(**{name: value})
    assert info.value.setting == _flag(name)


@pytest.mark.parametrize(
    ("name", "value"),
    [("workers", "4"), ("workers", 2.0), ("backlog", True), ("drain_delay", "5"),
     ("drain_delay", False), ("connection_timeout", "none")],
)  # fmt: skip
def test_settings_built_in_code_refuse_values_of_the_wrong_type(name: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        Settings(**{"mode": "prefork", name: value})
    assert info.value.setting == _flag(name)
    assert "must be a" in info.value.message


@pytest.mark.parametrize("name", sorted(LIMITS))
def test_the_documented_ends_of_each_range_are_accepted(name: str) -> None:
    limit = LIMITS[name]
    # Settings whose pairs are checked together, set so that both ends of each are valid.
    frame: dict[str, Any] = {"poll_interval": 0.001, "liveness_timeout": MAX_SECONDS}
    if name in ("workers", "threads", "max_requests", "worker_timeout"):
        frame |= {"mode": "prefork", "workers": 1, "worker_timeout": 0}
    for end in [limit.high] if limit.above else [limit.low, limit.high]:
        value = int(end) if name in COUNTS else end
        given = {**frame, name: value}
        assert getattr(Settings(**given), name) == value
        texts = {key: str(v) for key, v in given.items()}
        from_env = settings_from({_variable(key): text for key, text in texts.items()})
        assert getattr(from_env, name) == value
        argv = [f"{_flag(key)}={text}" for key, text in texts.items()]
        assert getattr(cli.parse(argv, {}), name) == value


@pytest.mark.parametrize("name", sorted(n for n, limit in LIMITS.items() if limit.off))
def test_none_and_off_turn_a_timeout_off_from_a_flag_or_a_variable(name: str) -> None:
    assert getattr(cli.parse([_flag(name), "off"], {}), name) is None
    assert getattr(cli.parse([], {_variable(name): "none"}), name) is None


def test_every_numeric_setting_has_a_range() -> None:
    import dataclasses

    numeric = {
        f.name for f in dataclasses.fields(Settings)
        if str(f.type).startswith(("int", "float"))
    }  # fmt: skip
    assert numeric == set(LIMITS)


def test_every_setting_is_a_flag_with_its_declared_help_and_a_variable() -> None:
    from runtime.config import declared, help_text

    parser = cli._parser()
    flags = {a.dest: a for a in parser._actions}  # (argparse keeps no public list)
    for f in declared():
        action = flags[f.name]
        # a short flag (-b, -w) first when declared, then the long one (then --no-x for a switch)
        short = [f.metadata["short"]] if f.metadata["short"] else []
        assert action.option_strings[: len(short) + 1] == [*short, "--" + f.name.replace("_", "-")]
        assert action.help == help_text(f.name)
        value = str(f.default).lower()
        if isinstance(f.default, bool):
            value = "on" if f.default else "off"
        if f.default is not None:  # its RUNTIME_* variable sets the same setting
            assert getattr(cli.parse([], {_variable(f.name): value}), f.name) == f.default


@pytest.mark.parametrize("consumer", ["engine", "unit", "pool", "server"])
def test_every_setting_passed_on_is_a_keyword_its_consumer_takes(consumer: str) -> None:
    # Declared once (runtime/config.py): app passes Settings.options(consumer) on as it is.
    import inspect

    import runtime
    from runtime.lifecycle import Runtime, ServerUnit
    from runtime.prefork import Prefork

    options = Settings(mode="prefork").options(consumer)
    assert options
    if consumer == "server":  # class attributes of the instrumented server
        cls = runtime.instrument(runtime.TCPServer, "thread")
        assert all(hasattr(cls, name) for name in options), options
        return
    target = {"engine": Runtime, "unit": ServerUnit, "pool": Prefork}[consumer]
    accepted = inspect.signature(target).parameters
    assert set(options) <= set(accepted), set(options) - set(accepted)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("args", "environ", "setting"),
    [
        (["--connection-timeout", "inf"], {}, "--connection-timeout"),
        (["--poll-interval", "nan"], {}, "--poll-interval"),
        (["--backlog", "99999999999"], {}, "--backlog"),
        # Not 100000: before the fix that forked workers until the time-out; this fails in mmap.
        (["--mode", "prefork", "--workers", "1000000000000"], {}, "--workers"),
        ([], {"RUNTIME_LIVENESS_TIMEOUT": "nan"}, "RUNTIME_LIVENESS_TIMEOUT"),
    ],
)
def test_the_real_command_exits_2_with_one_line_and_no_traceback(
    args: list[str], environ: dict[str, str], setting: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "runtime", "echo", *args, "--bind", "127.0.0.1:0",
         "--admin", "off"],
        cwd=ROOT, env={**env(), **environ}, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"runtime: error: {setting}: must be"), line
