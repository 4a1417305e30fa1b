"""The errors a user can cause and fix (bad params, bad data, a damaged model folder, an unreachable
tracking store): each carries a one-line message naming the file or key and the fix. They live below every
other module so that the stage runner can catch them without importing the library's heavy parts.
"""

from __future__ import annotations

import signal


class ParamsError(ValueError):
    """A parameter is unknown, of the wrong type or out of range; the message names the key."""


class DataError(ValueError):
    """Input data is missing or invalid; the message names the file (and line) and the reason."""


class ModelLoadError(RuntimeError):
    """A saved model directory cannot be loaded; the message names the file (and key) at fault."""


class TrackingUnavailable(RuntimeError):
    """The tracking server did not answer and ``tracking.on_unreachable`` is ``stop``."""


class SettingsChanged(RuntimeError):
    """``params.yaml`` no longer holds the settings a stage started with (another ``dvc exp run`` in the same
    workspace wrote its ``-S`` values there): the stage stops rather than be recorded with settings it did not use."""


class OutputUnwritable(RuntimeError):
    """A folder a stage will write to cannot be written (permissions, a read-only disk, a file in its place, too
    little free space): found before any work, not at the first save an hour in."""


class OutOfMemory(RuntimeError):
    """The device ran out of memory for a step: the message names the step, the batch and what to lower."""


class TrainingDiverged(RuntimeError):
    """The loss (or a weight) stopped being a finite number: the message names the step, the task and the likely
    cause. Raised at once, before a checkpoint could keep the broken weights."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (Slurm, torchrun, ``kill``) or SIGHUP (the terminal or SSH session went away): handled as Ctrl-C is
    (checkpoint kept, MLflow run KILLED), so it derives from ``KeyboardInterrupt``; ``palbert.stage`` turns the
    signal into it."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(signum)
        self.signum = int(signum)

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name


#: What ``palbert.stage.run_stage`` and the CLI report in one line instead of a traceback.
USER_ERRORS: tuple[type[Exception], ...] = (ParamsError, DataError, ModelLoadError, TrackingUnavailable,
                                            SettingsChanged, OutputUnwritable, OutOfMemory, TrainingDiverged,
                                            FileNotFoundError)
