"""LoopTool's exception root and the error kinds the service runtime treats specially."""


class LoopToolError(Exception):
    """Root of every error LoopTool raises on purpose."""


class PermanentError(LoopToolError):
    """Retrying cannot help (a refused request, an invalid input): the runtime dead-letters
    the message on the first failure instead of spending every delivery attempt on it."""


class PoisonMessage(PermanentError):
    """A message that cannot be read at all: undecodable, too deeply nested, a bad header or a
    claim check whose object is missing."""


def describe(exc: BaseException) -> str:
    """One line naming what went wrong: for an exception group (a task group's), its leaves too,
    which ``traceback.format_exception_only`` leaves out before Python 3.13."""
    if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        return describe(exc.exceptions[0])  # a task group around one failure says nothing more
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, BaseExceptionGroup):
        leaves = [describe(inner) for inner in exc.exceptions]
        return f"{text}: " + "; ".join(leaves)
    return text


def is_permanent(exc: BaseException) -> bool:
    """A :class:`PermanentError`, or a group (a task group's) of nothing else."""
    if isinstance(exc, BaseExceptionGroup):
        return all(is_permanent(inner) for inner in exc.exceptions)
    return isinstance(exc, PermanentError)
