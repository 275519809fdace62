"""The test server's `--enable_batching` (tests/export/serving_server.py, "Batching"):
TF Serving's `BatchingParameters`, SharedBatchScheduler's queues and batch threads, and
batching_session.cc's merging, padding and splitting of a batch."""

from __future__ import annotations

import collections
import os
import threading
import time

import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from serving_errors import RequestError, clean_tf_message


def batching_parameters(text: str = ""):
    """A `BatchingParameters` message parsed from its text form (a
    `--batching_parameters_file`), e.g. "max_batch_size { value: 8 }".

    The message type is TF Serving's (`servables/tensorflow/session_bundle_config.proto`,
    same package, field names and numbers), restricted to the fields this server
    implements: `max_batch_size`, `batch_timeout_micros`, `max_enqueued_batches`,
    `num_batch_threads`, `allowed_batch_sizes`, `pad_variable_length_inputs`; any
    other field is a parse error here.
    """
    if "cls" not in _BATCHING:
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

        pool = descriptor_pool.DescriptorPool()
        pool.Add(
            descriptor_pb2.FileDescriptorProto.FromString(wrappers_pb2.DESCRIPTOR.serialized_pb)
        )
        proto = descriptor_pb2.FileDescriptorProto(
            name="tfcap_tests/batching_parameters.proto",
            package="tensorflow.serving",
            syntax="proto3",
            dependency=["google/protobuf/wrappers.proto"],
        )
        message = proto.message_type.add(name="BatchingParameters")
        field = descriptor_pb2.FieldDescriptorProto
        for name, number in (
            ("max_batch_size", 1),
            ("batch_timeout_micros", 2),
            ("max_enqueued_batches", 3),
            ("num_batch_threads", 4),
        ):
            message.field.add(
                name=name,
                number=number,
                type=field.TYPE_MESSAGE,
                type_name=".google.protobuf.Int64Value",
                label=field.LABEL_OPTIONAL,
            )
        message.field.add(
            name="allowed_batch_sizes", number=6, type=field.TYPE_INT64, label=field.LABEL_REPEATED
        )
        message.field.add(
            name="pad_variable_length_inputs",
            number=7,
            type=field.TYPE_BOOL,
            label=field.LABEL_OPTIONAL,
        )
        pool.Add(proto)
        _BATCHING["cls"] = message_factory.GetMessageClass(
            pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters")
        )
    return text_format.Parse(text, _BATCHING["cls"]())


_BATCHING: dict = {}


def batch_limits(params) -> tuple[int, float, int, int]:
    """`max_batch_size`, the timeout in seconds, the batch threads and
    `max_enqueued_batches` of a `BatchingParameters` message (SharedBatchScheduler's
    defaults for unset fields); raises ValueError as the real server refuses it."""

    def value(field: str, default: int) -> int:
        return getattr(params, field).value if params.HasField(field) else default

    max_batch = value("max_batch_size", 1000)
    allowed = list(params.allowed_batch_sizes)
    if allowed and allowed[-1] != max_batch:
        raise ValueError(
            "Last entry in allowed_batch_sizes must match max_batch_size; last entry was "
            f"{allowed[-1]}; expected {max_batch}"
        )
    threads = value("num_batch_threads", os.cpu_count() or 1)
    if threads < 1 or max_batch < 1:
        raise ValueError("num_batch_threads and max_batch_size must be positive")
    timeout = value("batch_timeout_micros", 0) / 1e6
    return max_batch, timeout, threads, value("max_enqueued_batches", 10)


class Task:
    """One request's inputs; `result` waits for its outputs (or raises its error)."""

    def __init__(self, arrays: dict[str, np.ndarray], batched: bool = False):
        self.arrays = arrays
        sizes = {a.shape[0] for a in arrays.values()}
        if batched and len(sizes) != 1:  # ComputeTensorBatchSize
            raise RequestError("Batching Run() input tensors must have equal 0th-dimension size")
        self.size = max(sizes)
        self.outputs: dict | None = None
        self.error: Exception | None = None
        self.done = threading.Event()

    def result(self, deadline: float | None) -> dict[str, np.ndarray]:
        left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        if not self.done.wait(left):
            raise RequestError("Deadline exceeded: no answer within --rest_api_timeout_in_ms", 504)
        error, self.error = self.error, None
        if error is None:
            return self.outputs
        try:
            raise error
        finally:  # no cycle task -> error -> traceback -> this frame -> task
            error = None


def run_tasks(run_fn, batch: list[Task], allowed=(), pad: bool = False) -> None:
    """Runs `batch` as one merged call (`ProcessBatch` of batching_session.cc) and hands
    every task its rows of the outputs, or the batch's error."""
    try:
        merged = _merge(batch, allowed, pad) if len(batch) > 1 or allowed else batch[0].arrays
        outputs = {k: np.asarray(v) for k, v in run_fn(merged).items()}
        total = next(iter(merged.values())).shape[0]
        if any(v.shape[:1] != (total,) for v in outputs.values()):
            raise RequestError(
                "Batched output tensor's 0th dimension does not equal the sum of the 0th "
                "dimension sizes of the input tensors"
            )
        start = 0
        for task in batch:  # padding rows (allowed_batch_sizes) are dropped
            task.outputs = {k: v[start : start + task.size] for k, v in outputs.items()}
            start += task.size
    except tf.errors.InvalidArgumentError as e:  # every task of a failed batch: its own copy
        for task in batch:
            task.error = RequestError(clean_tf_message(e.message))
    except RequestError as e:
        for task in batch:
            task.error = RequestError(str(e), e.status)
    except Exception as e:  # noqa: BLE001 - a fault of the server: 500
        for task in batch:
            task.error = RequestError(f"{type(e).__name__}: {e}", 500)
    for task in batch:
        task.done.set()


def _merge(batch: list[Task], allowed, pad: bool) -> dict[str, np.ndarray]:
    """`MergeInputTensors` of batching_session.cc: concatenates along dimension 0, padding
    the other dimensions (`pad`) and the batch up to the lowest allowed size."""
    size = sum(task.size for task in batch)
    target = next((n for n in allowed if n >= size), size)  # RoundToLowestAllowedBatchSize
    merged = {}
    for name in batch[0].arrays:
        parts = [task.arrays[name] for task in batch]
        if pad:
            top = np.max([p.shape for p in parts], axis=0)
            parts = [pad_like_serving(p, top) for p in parts]
        elif any(p.shape[1:] != parts[0].shape[1:] for p in parts):
            raise RequestError(
                f"Tensors with name '{name}' from different tasks have different shapes "
                "and padding is turned off. Set pad_variable_length_inputs to true, or "
                "ensure that all tensors with the same name have equal dimensions starting "
                "with the first dim."
            )
        parts += [parts[-1][:1]] * (target - size)  # batch padding: the last task's row 0
        merged[name] = np.concatenate(parts)
    return merged


class _Batch:
    def __init__(self):
        self.tasks: list[Task] = []
        self.size = 0
        self.opened = 0.0  # when its first task came


class BatchQueue:
    """One signature's queue of batches (SharedBatchScheduler's `Queue`): the last batch
    is open, the ones before it closed. Made by `BatchScheduler.add_queue`."""

    def __init__(self, scheduler: BatchScheduler, run_fn):
        self.scheduler, self.run_fn = scheduler, run_fn
        self.batches: collections.deque[_Batch] = collections.deque([_Batch()])

    def schedule(self, arrays: dict[str, np.ndarray]) -> Task:
        """Enqueues a request (`Schedule` and `ValidateBatchTaskQueueCapacity`)."""
        task = Task(arrays, batched=True)
        s = self.scheduler
        if task.size > s.max_batch:
            raise RequestError(
                f"Task size {task.size} is larger than maximum input batch size {s.max_batch}"
            )
        with s.cond:
            if self.batches[-1].size + task.size > s.max_batch:
                if len(self.batches) >= s.max_enqueued:
                    raise RequestError(
                        "The batch scheduling queue to which this task was submitted is full; "
                        f"currently {len(self.batches)} batches enqueued and "
                        f"max_enqueued_batches is {s.max_enqueued}",
                        503,
                    )
                self.batches.append(_Batch())  # closes the open batch
            batch = self.batches[-1]
            if not batch.tasks:
                batch.opened = time.monotonic()
            batch.tasks.append(task)
            batch.size += task.size
            s.cond.notify_all()
        return task

    def wait(self, now: float) -> float | None:
        """Seconds until the first batch may run (0: now), None if there is none. A
        batch may run once closed, full, or `batch_timeout_micros` after it opened."""
        first = self.batches[0]
        if len(self.batches) > 1 or first.size >= self.scheduler.max_batch:
            return 0.0
        if not first.tasks:
            return None
        return max(first.opened + self.scheduler.timeout - now, 0.0)

    def take(self) -> list[Task]:
        """The first batch's tasks, leaving an open (possibly empty) batch."""
        batch = self.batches.popleft()
        if not self.batches:
            self.batches.append(_Batch())
        return batch.tasks


class BatchScheduler:
    """TF Serving's `--enable_batching`: a SharedBatchScheduler whose `num_batch_threads`
    run the ready batches of every queue (module docstring, "Batching")."""

    def __init__(self, params):
        self.max_batch, self.timeout, threads, self.max_enqueued = batch_limits(params)
        self.allowed = list(params.allowed_batch_sizes)
        self.pad = params.pad_variable_length_inputs
        self.cond = threading.Condition()
        self.queues: list[BatchQueue] = []
        for i in range(threads):
            threading.Thread(target=self._loop, daemon=True, name=f"batch-{i}").start()

    def add_queue(self, run_fn) -> BatchQueue:
        queue = BatchQueue(self, run_fn)
        with self.cond:
            self.queues.append(queue)
        return queue

    def _next(self) -> tuple[BatchQueue, list[Task]]:
        """Waits for a batch that may run; of several, the one opened first."""
        with self.cond:
            while True:
                now = time.monotonic()
                waits = [(q.wait(now), q) for q in self.queues]
                waits = [(w, q) for w, q in waits if w is not None]
                ready = [q for w, q in waits if w <= 0]
                if ready:
                    queue = min(ready, key=lambda q: q.batches[0].opened)
                    return queue, queue.take()
                self.cond.wait(min((w for w, _ in waits), default=None))

    def _loop(self) -> None:
        while True:
            queue, batch = self._next()
            run_tasks(queue.run_fn, batch, self.allowed, self.pad)


def pad_like_serving(array: np.ndarray, shape) -> np.ndarray:
    """`AddPadding` of TF Serving's batching_util: pads every dimension but the 0th up to
    `shape`, with the array's first element.

    >>> pad_like_serving(np.array([[[5.0], [6.0]]]), (1, 3, 2)).tolist()
    [[[5.0, 5.0], [6.0, 5.0], [5.0, 5.0]]]
    """
    widths = [(0, 0)] + [
        (0, int(want) - have) for have, want in zip(array.shape[1:], shape[1:], strict=True)
    ]
    if not any(after for _, after in widths):
        return array
    if array.size == 0:
        raise RequestError("Got empty tensor in batch of non-empty tensors.")
    return np.pad(array, widths, constant_values=array.flat[0])
