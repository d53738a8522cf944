"""The errors that are the user's input, not a bug: each becomes one line on stderr and exit status 2."""
from trainables.config import ConfigError
from trainables.data.sources import DataError
from trainables.models.sources import ModelSourceError
from trainables.models.taps import TapError
from trainables.sparsity import SparsityError
from trainables.teacher_file import TeacherError


class UsageError(ValueError):
    """Bad input found by the driver itself (a flag, a space file, a storage path)."""


USER_ERRORS = (ConfigError, DataError, ModelSourceError, SparsityError, TapError, TeacherError, UsageError)


class ServiceError(RuntimeError):
    """A service the command needs failed on its own (Ray could not start, the tracking server stopped
    answering): not the user's input, so one line and exit status 1."""
