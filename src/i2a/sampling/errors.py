"""What `i2a generate` and `i2a app` report: an input that cannot be used, or a model that cannot be loaded."""
from __future__ import annotations

EXIT_INPUT_ERRORS = 1  # some inputs could not be used; the others were generated
EXIT_MODEL_ERROR = 2  # nothing was generated: the config, the model or the arguments are wrong


class InputError(ValueError):
    """An input that cannot be used; the message says why and what to give instead."""


class ModelError(ValueError):
    """The model cannot be loaded as asked; the message says which file and how to get it."""
