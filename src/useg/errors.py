"""The one error type for problems a user can cause and fix."""


class UsegError(Exception):
    """A user-caused problem: the CLI prints its message on one line and exits with `exit_code`."""

    exit_code = 2


class DataError(UsegError):
    """The data folder, annotation file or an image is missing or malformed."""


class ConfigError(UsegError):
    """A flag or config-file value is invalid or incompatible."""


class CheckpointError(UsegError):
    """A checkpoint is missing, corrupt, unsafe, or belongs to another run."""


class DivergedError(UsegError):
    """Training produced a non-finite loss or state; nothing non-finite was saved."""

    exit_code = 3
