"""Exception types of the library. Every user-facing failure is one of these, with a readable message."""


class TwosspError(Exception):
    """Base class: a failure the user can act on (bad input, infeasible target, missing data)."""


class InvalidSpec(TwosspError):
    """The request itself is malformed: a value out of range, an unknown option or method."""


class InfeasibleTarget(TwosspError):
    """The requested sparsity cannot be reached with this method on this model."""


class UnsupportedModel(TwosspError):
    """The model's architecture has no adapter."""


class ModelNotFound(TwosspError):
    """The model id or path could not be resolved or loaded."""


class DataError(TwosspError):
    """Calibration or evaluation data could not be read, or yields no full window."""


class Cancelled(TwosspError):
    """The caller asked the running work to stop."""


class HealDiverged(TwosspError):
    """The heal's training loss became NaN or infinite (the learning rate is too high for this model)."""
