"""Errors a user can cause. The CLI prints the message as one sentence and exits non-zero, never a traceback."""


class UserError(Exception):
    """A problem the user can fix: a missing device, a corrupt model, a bad preset, an unknown MIDI port."""

    exit_code = 1

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code
