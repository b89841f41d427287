"""The project's own errors: one base, two kinds, each with its exit code.

:class:`QbtcError` is the base of every error qbtc raises on purpose.
:class:`UsageProblem` (exit 2) is something the user can fix in what they
gave: a config key, an input file, a strategy spec, a resume with changed
settings. :class:`OutsideFailure` (exit 1) is the outside world failing: the
store, the broker, a delivery. The CLI maps them to exit codes in one place
(``flows.cli``); anything else is a bug and keeps its traceback.

>>> class BadKey(UsageProblem): ...
>>> (BadKey("x").exit_code, OutsideFailure("y").exit_code, issubclass(BadKey, QbtcError))
(2, 1, True)
"""

from __future__ import annotations


class QbtcError(Exception):
    """Base of qbtc's own errors; ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class UsageProblem(QbtcError):
    """A problem in what the user gave (config, input, spec, resume): exit code 2."""

    exit_code = 2


class OutsideFailure(QbtcError):
    """The outside world failed (store, broker, delivery): exit code 1."""

    exit_code = 1
