"""Specific exceptions. Each message names the file/field at fault and how to fix it."""


class PosesceneError(Exception):
    """Base class for errors posescene reports to the user (no traceback needed)."""


class ConfigError(PosesceneError):
    """params.yaml (or an override) is invalid."""


class InputDataError(PosesceneError):
    """An input dataset/file cannot be used at all (individual bad images are rejected, not raised)."""


class ModelLoadError(PosesceneError):
    """A base model, adapter or judge is missing or incompatible."""


class DetectorUnavailableError(PosesceneError):
    """A pose detector's weights or package are missing."""


class TrainingDivergedError(PosesceneError):
    """A non-finite loss stopped training; the last good checkpoint is kept."""
