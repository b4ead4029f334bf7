"""One command-line convention for every `python -m sonify.<command>` (docs/cli.md).

A word `key=value` is a setting (`run=demo`, `run.root=/data/runs`, `checkpoint=DIR`, or a config override
such as `stage=audio`); `--flag VALUE` options and positional words are the command's own, as its `--help`
lists them, and a flag's value is never taken for a setting (`--root landscapes=DIR`). `run=` is resolved by
`engine.runs` for every command. A bad argument is one line, `<command>: <why>`, and exit status 2.
"""

from __future__ import annotations

import argparse
import functools
import re
import sys
from pathlib import Path
from typing import Callable

from sonify.engine.errors import ConfigError, SonifyError
from sonify.engine.runs import DEFAULT_RUN, RUN_KEYS, split_run_arg

SETTING = re.compile(r"^[A-Za-z_][\w.-]*=")   # `key=value`; SQL such as "SELECT a=1" has a space before its `=`
SETTINGS_HELP = "settings: key=value words anywhere on the line, e.g. run=<run folder | run name | pipeline> (docs/cli.md)"


class CommandParser(argparse.ArgumentParser):
    """argparse whose errors are one line (`prog: message`, exit 2) instead of a usage block and a message."""

    def error(self, message: str):
        self.exit(2, f"{self.prog.removeprefix('python -m ')}: {message}\n")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a count or size where 0 means nothing to do)."""
    n = _integer(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return n


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    n = _integer(text)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return n


def positive_float(text: str) -> float:
    """argparse type: a number above 0 (a size limit)."""
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not x > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return x


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


def out_folder(text: str) -> str:
    """argparse type: a folder to write to (it may not exist yet); an existing file is refused."""
    if Path(text).exists() and not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file; give a folder")
    return text


def command_parser(name: str, doc: str | None, settings: bool = True, **kwargs) -> CommandParser:
    """The parser of `python -m sonify.<name>`: its docstring's first line as description, the settings named in the epilog."""
    kwargs.setdefault("description", (doc or "").strip().splitlines()[0] if doc else None)
    if settings and "epilog" not in kwargs:
        kwargs["epilog"] = SETTINGS_HELP
    return CommandParser(prog=f"python -m sonify.{name}", **kwargs)


def _value_flags(parser: argparse.ArgumentParser) -> set[str]:
    """Every option string (subcommands' included) that takes a value."""
    flags = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                flags |= _value_flags(sub)
        elif action.option_strings and action.nargs != 0:
            flags.update(action.option_strings)
    return flags


def split_settings(argv: list[str], parser: argparse.ArgumentParser | None = None) -> tuple[dict[str, str], list[str]]:
    """(`key=value` settings in order, the last of a key winning; the other words); a flag's value stays a word."""
    flags = _value_flags(parser) if parser is not None else set()
    settings, rest = {}, []
    for i, word in enumerate(argv):
        if SETTING.match(word) and not (i > 0 and argv[i - 1] in flags):
            key, value = word.split("=", 1)
            settings.pop(key, None)
            settings[key] = value
        else:
            rest.append(word)
    return settings, rest


def parse_command(parser: CommandParser, argv: list[str] | None, keys: tuple[str, ...] | None = RUN_KEYS
                  ) -> tuple[argparse.Namespace, dict[str, str]]:
    """The command's options and its settings; `keys`: the settings it takes (None: any, for config overrides).
    An unknown setting or option is one line and exit 2."""
    argv = sys.argv[1:] if argv is None else list(argv)
    settings, rest = split_settings(argv, parser)
    unknown = [k for k in settings if keys is not None and k not in keys]
    if unknown:
        parser.error(f"unknown setting {unknown[0]!r}; valid settings: {', '.join(keys) or 'none'}")
    return parser.parse_args(rest), settings


def settings_list(settings: dict[str, str], skip: tuple[str, ...] = ()) -> list[str]:
    """Settings back as `key=value` words (for a config loader), without the keys in `skip`."""
    return [f"{k}={v}" for k, v in settings.items() if k not in skip]


def run_of(parser: CommandParser, settings: dict[str, str], default: str | None = DEFAULT_RUN) -> Path | None:
    """The run folder `run=` (and `run.root=`) name, through `engine.runs` (None: no `run=` and no default);
    one line and exit 2 when none matches."""
    try:
        run_dir, _ = split_run_arg(settings_list({k: v for k, v in settings.items() if k in RUN_KEYS}), default)
    except ConfigError as e:
        parser.error(str(e))
    return run_dir


def report_errors(name: str, work: Callable[[], object], errors: tuple[type[BaseException], ...] = (FileNotFoundError, SonifyError)) -> int:
    """Run a command's work: 0, or for an expected failure (a missing run or table) its one line and 2."""
    try:
        work()
    except errors as e:
        print(f"sonify.{name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    return 0


def command(main: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
    """A command's `main(argv)`: a bad argument (argparse's exit, `run_of`'s) comes back as its exit status
    (2) after its one line, so `main([...]) == 2` in a test and `sys.exit(main())` agree; `--help` still
    exits (0) as argparse does."""
    @functools.wraps(main)
    def wrapped(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        except SystemExit as e:
            if isinstance(e.code, int) and e.code != 0:
                return e.code
            raise
    return wrapped
