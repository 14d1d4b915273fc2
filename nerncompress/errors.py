"""Exception types. Every message is one line, names the key or path at fault, and says the fix.

The library never prints or exits; the CLI maps these types to exit codes (see ``cli/output.py``).
"""

from __future__ import annotations


class NernError(Exception):
    """Base class of every error nerncompress raises on purpose."""


class UsageError(NernError, ValueError):
    """An option value or a combination of options that cannot work (CLI exit code 2).

    Messages name keyword arguments (``lr must be > 0``); the CLI rewords them with its flags.
    """


class CheckpointError(NernError):
    """A model checkpoint is missing, unreadable, corrupt or holds unusable tensors."""


class ArchDetectionError(NernError):
    """No registered architecture matches a checkpoint, or the named one does not fit it."""


class ArtifactError(NernError):
    """A ``.nern`` file is missing, corrupt, of an unknown schema, or inconsistent."""


class DataError(NernError):
    """A dataset path or format cannot be read."""


class ExportCheckError(NernError):
    """An exported model failed its verification against PyTorch."""


class AccuracyTargetMissed(NernError):
    """The artifact was written but its measured accuracy is below the requested target."""


class Interrupted(KeyboardInterrupt):
    """A training run stopped on SIGINT or SIGTERM after saving its progress (CLI exit code 130).

    A ``KeyboardInterrupt``, so that code which does not know about it stops as on Ctrl-C. The message names the
    resume file and says how to continue.
    """
