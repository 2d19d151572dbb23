"""Exceptions for user mistakes. The CLI turns each into one line on stderr and exit code 2."""


class ResnetsError(Exception):
    """Base class: a problem with what the user asked for, not a bug in resnets."""


class UnknownModelError(ResnetsError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ConfigError(ResnetsError, ValueError):
    """An argument or option that does not fit the model or command."""


class CheckpointError(ResnetsError):
    """A weights file that cannot be read, or does not fit the model."""
