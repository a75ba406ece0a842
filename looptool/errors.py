"""Error kinds the service runtime treats specially."""


class PermanentError(Exception):
    """Retrying cannot help (a refused request, an invalid input): the runtime dead-letters
    the message on the first failure instead of spending every delivery attempt on it."""
