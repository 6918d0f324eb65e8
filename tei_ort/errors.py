"""One error tree for the whole package. No HTTP here: the server maps each class to a status code
in one table (serve/errors.py), as TEI does.

    TeiOrtError
    ├── PackageError          a model package or source folder is missing a file or is malformed
    ├── UnsupportedModel      an architecture or task this tool cannot export or serve
    ├── ProviderUnavailable   an execution provider that was asked for explicitly is absent
    ├── ValidationError       a request breaks a rule (422 in TEI)
    │   ├── EmptyInput        an empty request (400 in TEI)
    │   └── BatchSizeError    more inputs than --max-client-batch-size (422; its own metric label)
    ├── TokenizationError     the tokenizer rejected an input (422 in TEI)
    ├── Overloaded            admission is full (429)
    ├── WrongModelType        the route does not fit the model's task (424 in TEI)
    ├── BackendError          a forward pass failed (424 in TEI)
    └── Unhealthy             the runtime is failing (503)
"""

from __future__ import annotations


class TeiOrtError(Exception):
    """Base of every error this package raises on purpose."""


class PackageError(TeiOrtError):
    pass


class UnsupportedModel(TeiOrtError):
    pass


class ProviderUnavailable(TeiOrtError):
    pass


class ValidationError(TeiOrtError):
    pass


class EmptyInput(ValidationError):
    pass


class BatchSizeError(ValidationError):
    pass


class TokenizationError(TeiOrtError):
    pass


class Overloaded(TeiOrtError):
    pass


class WrongModelType(TeiOrtError):
    pass


class BackendError(TeiOrtError):
    pass


class Unhealthy(TeiOrtError):
    pass
