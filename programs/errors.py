"""Errors a user can act on, each with the exit code the CLI returns for it.

Every error here prints as one clear message (no traceback): where the problem is,
what is wrong and what to do about it.
"""

from __future__ import annotations

from dataclasses import dataclass

EXIT_USAGE = 2  # broken spec, template, seed file or option
EXIT_REPLAY_MISS = 3  # replay needed a call the cache does not hold
EXIT_RUN_FAILED = 1  # the run could not produce what was asked
EXIT_BUDGET = 4  # the run's budget stopped it (the data so far is written; rerun to resume)


def first_clause(exc: BaseException) -> str:
    """An exception's message without Python's advice after ';' (`int()` past 4,300 digits adds
    "use sys.set_int_max_str_digits() to increase the limit", a fix for a programmer, not a user)."""
    return str(exc).split(";")[0]


class Terminated(KeyboardInterrupt):
    """SIGTERM: stops a command the way Ctrl-C does (the CLI exits 143 instead of 130)."""


class CodecError(Exception):
    """Base class: an error the CLI reports as a message and an exit code."""

    exit_code = EXIT_RUN_FAILED


@dataclass
class SpecError(CodecError):
    """A problem in a spec, a template or a seed file, located by file and line."""

    file: str
    message: str
    line: int | None = None
    hint: str | None = None

    exit_code = EXIT_USAGE

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        text = f"{where}: {self.message}"
        return f"{text}\n  fix: {self.hint}" if self.hint else text


class SpecErrors(CodecError):
    """Several spec problems reported together, so one run of `validate` shows them all."""

    exit_code = EXIT_USAGE

    def __init__(self, errors: list[SpecError]):
        super().__init__("\n".join(str(e) for e in errors))
        self.errors = errors


# Where hints send a user for more, in words true for a checkout and for an installed codeclm alike
# (pip installs neither docs/ nor specs/ in the working folder: `codeclm init DIR` copies them there).
SPEC_REFERENCE = "the spec reference, docs/spec.md (in a checkout, or copied by `codeclm init DIR`)"
CODECLM_README = "codeclm's README, on its project page or as README.md in a checkout"


# What to do about a replay's miss, per command: the calls are made by the same command without --replay.
RUN_REPLAY_FIX = ("run the spec live (`codeclm run SPEC`, no --replay) to make the missing calls, or import the "
                  "run's cache bundle (`codeclm cache import`)")
EVALUATE_REPLAY_FIX = ("run the same `codeclm evaluate` command without --replay to make the missing calls, or "
                       "import a cache bundle that holds them (`codeclm cache import`)")
COMPARE_REPLAY_FIX = ("run the same `codeclm compare` command without --replay to make the missing calls, or "
                      "import a cache bundle that holds them (`codeclm cache import`)")


class ReplayMiss(CodecError):
    """Replay (read-only cache) needed a model call that was never recorded."""

    exit_code = EXIT_REPLAY_MISS

    def __init__(self, stage: str, item: str, model: str, reason: str, fix: str = RUN_REPLAY_FIX):
        super().__init__(
            f"replay: no cached completion for stage '{stage}', item '{item}' (model {model}).\n"
            f"  what changed: {reason}\n"
            f"  fix: {fix}"
        )
        self.stage, self.item, self.model, self.reason, self.fix = stage, item, model, reason, fix


class ModelCrashed(CodecError):
    """A model's process died (the embedded model): no later call can succeed, so the run stops
    with the cause; every finished call is cached, so rerunning resumes."""


class ModelCallError(CodecError):
    """A model call failed for good (retries exhausted, or an error retrying cannot fix)."""

    def __init__(self, message: str, *, retryable: bool = False, retry_after: float | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after
