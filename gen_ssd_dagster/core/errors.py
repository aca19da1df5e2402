"""One exception type for everything a user can get wrong, so callers can catch it and show it."""


class GenSSDError(ValueError):
    """Bad input or configuration. The message names the file, the row or the setting."""


class ConfigError(GenSSDError):
    """A setting has a value that cannot work. The message names the setting."""


class DataError(GenSSDError):
    """A dataset file or row is unusable. The message names the file and the row."""


class ModelLoadError(GenSSDError):
    """A model or tokenizer could not be loaded. The message names the path or hub id."""


class TrainingError(RuntimeError):
    """A process of a multi-process training run failed. The message names the rank and its error."""
