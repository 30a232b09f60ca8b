"""Read a Dockerfile's stages and instructions (for the container and Kubernetes tests)."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
CONSTRAINTS = ROOT / "constraints.txt"


def pinned() -> dict[str, str]:
    """constraints.txt (the versions the image's wheels are built at) as canonical name ->
    version."""
    from packaging.utils import canonicalize_name

    found = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version, f"not name==version: {line!r}"
            found[canonicalize_name(name)] = version
    return found


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [rest for kw, rest in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"the stage FROM {self.base} has no {keyword}"
        return found[-1]


def _logical_lines(text: str) -> Iterator[str]:
    """Instructions with their continuation lines joined; comments and blanks dropped."""
    buffer: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # Docker drops comment lines, also inside a continued instruction
        if line.endswith("\\"):
            buffer.append(line[:-1].strip())
            continue
        buffer.append(line)
        yield " ".join(buffer)
        buffer = []
    if buffer:
        yield " ".join(buffer)


def _expand(text: str, args: dict[str, str]) -> str:
    return re.sub(
        r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), text
    )


def parse_dockerfile(text: str) -> list[Stage]:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in _logical_lines(text):
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            words = rest.split()
            words = [w for w in words if not w.startswith("--")]  # --platform=...
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(_expand(words[0], global_args), name))
        elif not stages:
            assert keyword == "ARG", f"only ARG may come before the first FROM, not {keyword}"
            key, _, default = rest.partition("=")
            global_args[key] = default
        else:
            stages[-1].instructions.append((keyword, rest))
    return stages


def env_of(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for rest in stage.all("ENV"):
        words = shlex.split(rest)
        if "=" in words[0]:
            env.update(word.split("=", 1) for word in words)  # type: ignore[misc]
        else:  # legacy form: ENV KEY value with spaces
            env[words[0]] = " ".join(words[1:])
    return env


def exec_form(rest: str, what: str) -> list[str]:
    try:
        argv = json.loads(rest)
    except json.JSONDecodeError:
        raise AssertionError(f"{what} must be in exec form (a JSON array), got {rest!r}") from None
    assert isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv), rest
    return argv


@dataclass
class Healthcheck:
    options: dict[str, str]
    argv: list[str]


def healthcheck_of(stage: Stage) -> Healthcheck:
    rest = stage.last("HEALTHCHECK")
    options_text, sep, command = rest.partition("CMD ")
    assert sep, f"HEALTHCHECK without CMD: {rest!r}"
    options = dict(opt.lstrip("-").split("=", 1) for opt in options_text.split())
    return Healthcheck(options, exec_form(command.strip(), "HEALTHCHECK CMD"))


def seconds(duration: str) -> float:
    """A Dockerfile duration (``3s``, ``1m30s``, ``500ms``) in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def stages(path: Path = DOCKERFILE) -> list[Stage]:
    return parse_dockerfile(path.read_text())
