"""User-facing errors: one line that says what failed and how to fix it.

Anything raised as :class:`VitrtError` is printed by the CLI as a single line and exits with code 2;
:class:`Interrupted` (Ctrl-C in a resumable command) says what was kept and exits 130; every other exception is
a bug and keeps its traceback.
"""


class Interrupted(Exception):
    """Ctrl-C during a resumable command: the message says what was kept and how to resume (exit 130)."""


class VitrtError(Exception):
    """A problem with the user's input or environment that the user can fix.

    The message must fit on one line and name what was expected (and, where it helps, how to fix it).
    """

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class SpecError(VitrtError):
    """A ViTSpec (or a graph that should match one) is malformed."""


class UnsupportedModelError(VitrtError):
    """The model is not one vitrt can lower."""


class BackendUnavailableError(VitrtError):
    """The requested backend's runtime is not installed on this machine."""


class OptionError(VitrtError):
    """An option (flag or keyword) has a value vitrt cannot use, or options contradict each other."""


class OutputError(VitrtError):
    """The output directory cannot be written (exists and is not empty, not a directory, no permission)."""


class CheckpointError(VitrtError):
    """A checkpoint file is missing, unreadable, not a state dict, or made for another model."""


class DataError(VitrtError):
    """A data source (digits, synthetic, an ImageFolder path) cannot be used."""
