"""Errors raised on bad input. Each message names the file or parameter at fault."""


class VPCError(Exception):
    """Base class of every error vpclib raises on purpose."""


class ConfigError(VPCError, ValueError):
    """A params file has an unknown key, a wrong type or an impossible value."""


class DatasetError(VPCError, ValueError):
    """A dataset root, split, frame or label file is missing, unreadable or inconsistent."""


class NoObjectsError(VPCError, RuntimeError):
    """The detector kept no object in a whole split, so the local memories cannot be built."""


class WeightsUnavailableError(VPCError, RuntimeError):
    """Model weights cannot be obtained (offline, or a missing local file)."""


class CacheMismatchError(VPCError, RuntimeError):
    """An artifact in the work directory was made with other parameters."""


class MissingArtifactError(VPCError, RuntimeError):
    """A stage's input artifact is not in the work directory: names it and the stage that makes it."""


class WorkDirError(VPCError, OSError):
    """The work directory cannot be written (read-only, full disk): names the file."""
