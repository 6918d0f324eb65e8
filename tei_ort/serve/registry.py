"""The models one server serves, by the name requests route by (`--served-model-name`, else the
model id). Every inference route resolves its body's `model` field here, so OpenAI, Cohere, Jina,
Ollama and TEI's routes all route the same way.

One model: the `model` field is not checked, as TEI does not check it (clients send
"text-embedding-ada-002" and the like). Several: no `model` means the first (the default), and
a name that is not served is ModelNotFound, a 404 in the route's own error body."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from tei_ort.errors import ValidationError
from tei_ort.serve.errors import ModelNotFound
from tei_ort.serve.operations import ServeContext


@dataclass(frozen=True)
class ModelRegistry:
    contexts: tuple[ServeContext, ...]  # in --model-id order; the first is the default

    def __post_init__(self) -> None:
        if not self.contexts:
            raise ValidationError("no model to serve")
        names = [ctx.served_model_name for ctx in self.contexts]
        if duplicates := sorted({name for name in names if names.count(name) > 1}):
            raise ValidationError(
                f"two models are served as {', '.join(duplicates)}: give each its own "
                "--served-model-name"
            )

    @classmethod
    def of(cls, models: ServeContext | ModelRegistry) -> ModelRegistry:
        return models if isinstance(models, ModelRegistry) else cls((models,))

    @property
    def default(self) -> ServeContext:
        return self.contexts[0]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(ctx.served_model_name for ctx in self.contexts)

    def __iter__(self) -> Iterator[ServeContext]:
        return iter(self.contexts)

    def __len__(self) -> int:
        return len(self.contexts)

    def resolve(self, name: object) -> ServeContext:
        """The model a body's `model` value names (None: the field is absent)."""
        if len(self.contexts) == 1 or name is None:
            return self.default
        if not isinstance(name, str):
            raise ValidationError("`model` must be a string: the name of a served model")
        for ctx in self.contexts:
            if ctx.served_model_name == name:
                return ctx
        raise ModelNotFound(
            f"model {name!r} is not served here; served models: {', '.join(self.names)}"
        )
