"""Reading a Dockerfile: its stages, instructions and variables."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pfimage import BuildError

__all__ = [
    "Dockerfile",
    "Instruction",
    "Stage",
    "exec_form",
    "expand",
    "parse",
    "split_flags",
    "words",
]

_VAR = re.compile(r"\$(?:\{(\w+)(?::([-+])([^}]*))?\}|(\w+))")


@dataclass(frozen=True)
class Instruction:
    """One instruction, its continuation lines joined."""

    keyword: str
    text: str
    line: int

    def normalized(self) -> tuple[str, str]:
        """The keyword and the text with runs of whitespace made one space."""
        return self.keyword, " ".join(self.text.split())


@dataclass
class Stage:
    """``FROM image [AS name]`` and what follows it."""

    image: str
    name: str | None
    body: list[Instruction] = field(default_factory=list)


@dataclass
class Dockerfile:
    """A parsed Dockerfile: the ARGs before the first FROM, and the stages."""

    path: Path
    global_args: dict[str, str | None]
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        """The stage called ``name``."""
        for s in self.stages:
            if s.name == name:
                return s
        raise BuildError(f"{self.path}: no stage named {name!r}")

    def scope(self, args: Mapping[str, str]) -> dict[str, str]:
        """The variables FROM lines see: the global ARGs' defaults, overridden by ``args``."""
        return {k: v for k, v in self.global_args.items() if v is not None} | dict(args)


def parse(path: Path) -> Dockerfile:
    """Parses a Dockerfile into its global ARGs and stages."""
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # comments and blank lines may sit inside a continued instruction too
        if not pending:
            start = number
        if line.endswith("\\"):
            pending.append(line[:-1])
            continue
        pending.append(line)
        keyword, _, text = " ".join(pending).partition(" ")
        instructions.append(Instruction(keyword.upper(), text.strip(), start))
        pending = []
    if pending:
        raise BuildError(f"{path}:{start}: a continued line runs off the end")
    result = Dockerfile(path, {}, [])
    for ins in instructions:
        if ins.keyword == "FROM":
            parts = ins.text.split()
            if len(parts) == 3 and parts[1].upper() == "AS":
                result.stages.append(Stage(parts[0], parts[2]))
            elif len(parts) == 1:
                result.stages.append(Stage(parts[0], None))
            else:
                raise BuildError(f"{path}:{ins.line}: FROM {ins.text!r} is not supported")
        elif not result.stages:
            if ins.keyword != "ARG":
                raise BuildError(f"{path}:{ins.line}: only ARG may come before FROM")
            name, eq, default = ins.text.partition("=")
            result.global_args[name] = default if eq else None
        else:
            result.stages[-1].body.append(ins)
    return result


def expand(text: str, env: Mapping[str, str]) -> str:
    """Substitutes ``$VAR``, ``${VAR}``, ``${VAR:-default}`` and ``${VAR:+alt}``."""

    def one(m: re.Match[str]) -> str:
        value = env.get(m.group(1) or m.group(4), "")
        if m.group(2) == "-":
            return value or m.group(3)
        if m.group(2) == "+":
            return m.group(3) if value else ""
        return value

    return _VAR.sub(one, text)


def exec_form(text: str) -> list[str]:
    """RUN, CMD or ENTRYPOINT's argv: a JSON array as is, else ``/bin/sh -c TEXT``."""
    if text.lstrip().startswith("["):
        value = json.loads(text)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise BuildError(f"not a JSON array of strings: {text}")
        return value
    return ["/bin/sh", "-c", text]


def words(text: str, env: Mapping[str, str]) -> list[str]:
    """An instruction's arguments (JSON or shell words), variables substituted."""
    if text.lstrip().startswith("["):
        return [expand(w, env) for w in exec_form(text)]
    return [expand(w, env) for w in shlex.split(text)]


def split_flags(text: str) -> tuple[list[str], str]:
    """``--flag=value`` words at the start of RUN or COPY, and the rest of the text."""
    flags = []
    rest = text.lstrip()
    while rest.startswith("--"):
        flag, _, rest = rest.partition(" ")
        flags.append(flag)
        rest = rest.lstrip()
    return flags, rest
