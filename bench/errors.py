"""The one exception the CLI turns into a one-line message and an exit code."""


class UserError(Exception):
    """Bad input or an unusable environment: message says what to do; no traceback."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code
