"""Serve translations over HTTP: `python -m train.serve --workdir=DIR [--port=8000]`.

Loads a trained run once and answers JSON requests on http://127.0.0.1:8000/ (--host,
--port; --port=0 picks a free port), with a web page at / that shows each translation's
cross-attention and word alignment. Decoding defaults as for `train.translate` (--decoding,
--beam_size, --length_penalty, ..., --step, --average_last, --batch_size,
--compilation_cache); a request may override them.

    python -m train.serve --workdir=runs/multi30k --average_last=5
    curl -s localhost:8000/translate -d '{"text": "A man is riding a bike.", "alignments": true}'
    # {"translations": [{"line": 1, "source": "A man is riding a bike.", "translation": "...",
    #   "source_tokens": [...], "tokens": [...], "score": ..., "alignment": "0-0 1-1 ..."}]}

Endpoints:
  POST /translate  {"text": "..."} or {"texts": ["...", ...]} (at most --max_texts), and
                   optionally the decoding options "method" (greedy|beam|sample),
                   "beam_size", "length_penalty", "beam_stop", "temperature", "top_k",
                   "top_p", "seed", "max_length", and "alignments" (true/false),
                   "attention" (none|selected|all), "alignment_layer", "alignment_head" (an
                   index or "mean"), "alignment_units" (word|piece), as train.translate's
                   flags of the same names. Answers {"translations": [record, ...]}, one per
                   text in order: the JSON object that `train.translate --output_format=jsonl`
                   writes for a line ("line" counts the texts from 1).
  GET /health      {"status": "ok", ...}: the checkpoint, the queue, batches decoded so far
  GET /info        the model (layers, heads, max_len), the defaults and the limits
  GET /            the page (one file, train/serve_page/index.html; nothing fetched from
                   elsewhere)

Errors are one-line JSON objects {"error": "..."}, with status
  400  the body is not a JSON object (not UTF-8, not JSON, a list, ...)
  413  the body is longer than --max_request_bytes
  422  a JSON object that cannot be translated: an unknown key, a value of the wrong type or
       out of range, no text, an empty text, too many texts, a text that train.translate
       would skip ("texts[2]: 140 tokens long (with eos), longer than the model's max_len=128")
  404 / 405  no such endpoint / method
  503  the queue holds --max_queue lines already: try again later (Retry-After: 1)
  500  decoding failed (a bug: the server goes on serving)

Batching. One worker thread owns the model. A request's texts are queued as lines (a bounded
queue: --max_queue lines waiting, then 503); the worker takes the oldest request's lines and
those of every other request with the same decoding and attention options, one line from each
request in turn (so a request with many texts never holds up a short one for more than one
batch), up to --batch_size lines, waiting up to --max_wait_ms for more after the oldest line
arrived, and decodes them together with `train.translate.translate_lines_in_detail`; a request
is answered when its last line is decoded. A request that served part of a batch goes to the
back of the line. Greedy and beam search decode each line on its own, so a line's output does
not depend on the lines it is batched with (but for the floating-point rounding another batch
shape may bring); sampling does (its random draws follow the batch), so a sampling request's
lines are decoded apart from other requests', --batch_size at a time in order: the same request
with the same seed always gets the same output.

Compilation. A batch of n lines has the rows of the smallest power of two >= n (at most
--batch_size) and is padded to one of a few bucket lengths, so a few shapes cover all requests;
the first request of each shape, decoding method, beam size, top_k, top_p, max_length and
attention selection compiles once (seconds), and later ones reuse it (the persistent
compilation cache keeps them across restarts). At start the server compiles the default
options' shapes for the --warm_up_buckets shortest bucket lengths (every row count) before it
listens.

Ctrl-C (or SIGTERM) stops the server: requests in flight are answered first; status 0.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import importlib.resources
import itertools
import json
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from absl import app, flags, logging
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from flax_transformer import checks
from flax_transformer.decoding import AttentionSelection
from train import cli, compilation_cache, inference_flags
from train.evaluation import DECODING_METHODS, DecodingOptions, decode_batch
from train.translate import (
    ALIGNMENT_UNITS,
    ATTENTION_OUTPUTS,
    AlignmentOptions,
    Translation,
    alignment_links,
    json_line,
    run_line_problems,
    translate_lines_in_detail,
)

_HOST = flags.DEFINE_string("host", "127.0.0.1", "Address to listen on (0.0.0.0: every one).")
_PORT = flags.DEFINE_integer("port", 8000, "Port to listen on (0: a free one, printed).")
_MAX_QUEUE = flags.DEFINE_integer(
    "max_queue", 1024, "Lines waiting for the model at most; more requests get 503."
)
_MAX_WAIT_MS = flags.DEFINE_float(
    "max_wait_ms", 5.0, "How long a line waits for others to share its batch (milliseconds)."
)
_MAX_TEXTS = flags.DEFINE_integer("max_texts", 64, "Texts per request at most.")
_MAX_REQUEST_BYTES = flags.DEFINE_integer(
    "max_request_bytes", 1_000_000, "Size of a request body at most (bytes); more get 413."
)
_MAX_BEAM_SIZE = flags.DEFINE_integer("max_beam_size", 16, "A request's beam_size at most.")
_WARM_UP_BUCKETS = flags.DEFINE_integer(
    "warm_up_buckets",
    1,
    "Compile the default decoding of this many of the shortest bucket lengths, every row "
    "count, before listening (0: compile on the first requests instead).",
)
_ACCESS_LOG = flags.DEFINE_bool("access_log", False, "Log every request on stderr (uvicorn's).")
flags.adopt_module_key_flags(inference_flags)  # list them in --help
flags.adopt_module_key_flags(compilation_cache)  # --compilation_cache
flags.adopt_module_key_flags(cli)  # --debug

PAGE = "serve_page/index.html"  # in the train package


# ---------------------------------------------------------------------------------------------
# Errors a client sees
# ---------------------------------------------------------------------------------------------
class RequestError(ValueError):
    """A request that cannot be translated: `status` (400, 413, 422) and a one-line reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class QueueFullError(Exception):
    """The batcher's queue has no room for a request's lines (HTTP 503)."""


class StoppedError(Exception):
    """The batcher is not running (before start, or shutting down)."""


# ---------------------------------------------------------------------------------------------
# Dynamic batching: one worker thread, a bounded queue of lines
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class BatchKey:
    """What lines must share to be decoded in one batch: the decoding options and the
    attention to return (None: none)."""

    options: DecodingOptions
    attention: AttentionSelection | None = None


# decode(lines, key, first_batch_index) -> one result per line, in order
DecodeFunction = Callable[[list[str], BatchKey, int], list[Any]]


@dataclasses.dataclass(eq=False)
class _Job:
    """One request's lines in the queue."""

    lines: list[str]
    key: BatchKey
    alone: bool  # decoded apart from other jobs, in order (sampling)
    future: concurrent.futures.Future
    arrival: float  # time.monotonic() at submission
    results: list[Any] = dataclasses.field(default_factory=list)
    taken: int = 0  # lines handed to the worker so far
    finished: int = 0  # lines decoded so far
    batches: int = 0  # batches its lines went into so far (the batch index of an alone job)

    @property
    def remaining(self) -> int:
        return len(self.lines) - self.taken


class Batcher:
    """Requests' lines -> batches of at most `batch_size` lines for `decode`, which runs on
    one worker thread only (the module docstring has the rules).

    `submit` returns a `concurrent.futures.Future` of the request's results in line order
    (await it with `asyncio.wrap_future`); it raises QueueFullError when more than
    `max_queue` lines would be waiting (lines the worker took no longer count), StoppedError
    when the worker is not running. An exception in `decode` fails the requests of that batch
    (their futures raise it) and the worker goes on.
    """

    def __init__(
        self, decode: DecodeFunction, *, batch_size: int, max_wait_s: float, max_queue: int
    ) -> None:
        if batch_size < 1 or max_queue < 1 or not max_wait_s >= 0:
            raise ValueError(
                f"batch_size and max_queue must be >= 1 and max_wait_s >= 0, got {batch_size}, "
                f"{max_queue}, {max_wait_s}"
            )
        self.decode = decode
        self.batch_size, self.max_wait_s, self.max_queue = batch_size, max_wait_s, max_queue
        self._ready = threading.Condition()
        self._jobs: collections.deque[_Job] = collections.deque()  # whose turn: the head's
        self._queued = 0  # lines not yet taken by the worker
        self._running = False
        self._thread: threading.Thread | None = None
        self.batches_decoded = 0
        self.lines_decoded = 0

    @property
    def queued_lines(self) -> int:
        with self._ready:
            return self._queued

    def start(self) -> None:
        with self._ready:
            if self._running:
                return
            self._running = True
        self._thread = threading.Thread(target=self._work, name="translation worker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Finish the batch being decoded, fail the waiting requests (StoppedError), join."""
        with self._ready:
            self._running = False
            waiting, self._jobs, self._queued = list(self._jobs), collections.deque(), 0
            self._ready.notify_all()
        for job in waiting:
            _fail(job, StoppedError("the server is shutting down"))
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def submit(self, lines: list[str], key: BatchKey, *, alone: bool = False) -> Any:
        """Queue `lines` (at least one) to be decoded with `key`; `alone`: never with other
        requests' lines, `batch_size` at a time in order, the k-th batch decoded with
        first_batch_index k."""
        if not lines:
            raise ValueError("a job needs at least one line")
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._ready:
            if not self._running:
                raise StoppedError("the translation worker is not running")
            if self._queued + len(lines) > self.max_queue:
                raise QueueFullError(
                    f"the server is busy: {self._queued} lines are waiting for the model and "
                    f"this request brings {len(lines)} (--max_queue={self.max_queue}); try "
                    "again later"
                )
            job = _Job(list(lines), key, alone, future, time.monotonic(), [None] * len(lines))
            self._jobs.append(job)
            self._queued += len(lines)
            self._ready.notify_all()
        return future

    def _available(self, head: _Job) -> int:
        if head.alone:
            return head.remaining
        return sum(job.remaining for job in self._jobs if not job.alone and job.key == head.key)

    def _next_batch(self) -> tuple[list[tuple[_Job, int]], int] | None:
        """(the (job, line index) pairs of the next batch, its first_batch_index), or None
        when stopped. Waits for a job, then up to max_wait_s after its arrival for others."""
        with self._ready:
            while True:
                while self._running and not self._jobs:
                    self._ready.wait()
                if not self._running:
                    return None
                head = self._jobs[0]
                if not _started(head):
                    self._jobs.popleft()  # cancelled while it waited
                    self._queued -= len(head.lines)
                    continue
                deadline = head.arrival + self.max_wait_s
                while self._running and self._available(head) < self.batch_size:
                    timeout = deadline - time.monotonic()
                    if timeout <= 0:
                        break
                    self._ready.wait(timeout)
                if not self._running:
                    return None
                return self._take(head)

    def _take(self, head: _Job) -> tuple[list[tuple[_Job, int]], int]:
        """Up to batch_size lines, one from each job of `head`'s kind in turn; jobs that gave
        lines and have more go to the back of the line, cancelled ones leave."""
        members = [head]
        if not head.alone:
            members += [
                job
                for job in itertools.islice(self._jobs, 1, None)
                if not job.alone and job.key == head.key and _started(job)
            ]
        parts: list[tuple[_Job, int]] = []
        served: list[_Job] = []
        while len(parts) < self.batch_size and any(job.remaining for job in members):
            for job in members:
                if job.remaining and len(parts) < self.batch_size:
                    parts.append((job, job.taken))
                    job.taken += 1
                    if job not in served:
                        served.append(job)
        first_batch_index = head.batches if head.alone else 0
        for job in served:
            job.batches += 1
        cancelled = [job for job in self._jobs if job.future.cancelled()]
        stay = [job for job in self._jobs if job not in served and job not in cancelled]
        self._jobs = collections.deque(stay + [job for job in served if job.remaining])
        self._queued -= len(parts) + sum(len(job.lines) for job in cancelled)
        return parts, first_batch_index

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            parts, first_batch_index = batch
            head = parts[0][0]
            try:
                results = self.decode(
                    [job.lines[i] for job, i in parts], head.key, first_batch_index
                )
                if len(results) != len(parts):
                    raise RuntimeError(f"{len(results)} results for {len(parts)} lines")
            except Exception as error:  # a bug: fail this batch's requests, serve the others
                logging.exception("decoding a batch failed")
                failed = {job for job, _ in parts}
                with self._ready:
                    dropped = [job for job in self._jobs if job in failed]
                    self._jobs = collections.deque(j for j in self._jobs if j not in failed)
                    self._queued -= sum(job.remaining for job in dropped)
                for job in failed:
                    _fail(job, error)
                continue
            with self._ready:
                self.batches_decoded += 1
                self.lines_decoded += len(parts)
            for (job, index), result in zip(parts, results, strict=True):
                job.results[index] = result
                job.finished += 1
                if job.finished == len(job.lines) and not job.future.done():
                    job.future.set_result(job.results)


def _started(job: _Job) -> bool:
    """Whether `job` may be decoded: it was already, or its future was not cancelled (which
    from now on it cannot be)."""
    return job.taken > 0 or job.future.running() or job.future.set_running_or_notify_cancel()


def _fail(job: _Job, error: BaseException) -> None:
    if not job.future.done() and _started(job):
        job.future.set_exception(error)


# ---------------------------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Limits:
    """What one request may ask for."""

    max_texts: int = 64
    max_request_bytes: int = 1_000_000
    max_beam_size: int = 16


@dataclasses.dataclass(frozen=True)
class TranslationRequest:
    """A checked request: its texts (as given), decoding options, and the alignment options
    (None: neither alignments nor attention asked for)."""

    texts: list[str]
    options: DecodingOptions
    alignments: bool = False
    alignment: AlignmentOptions | None = None


# The request keys, each with the JSON type it takes (options: as DecodingOptions' fields).
_KINDS = {
    "text": "a string",
    "texts": "a list of strings",
    "method": "a string",
    "beam_size": "an integer",
    "length_penalty": "a number",
    "beam_stop": "a string",
    "temperature": "a number",
    "top_k": "an integer",
    "top_p": "a number",
    "seed": "an integer",
    "max_length": "an integer or null",
    "alignments": "a boolean",
    "attention": "a string",
    "alignment_layer": "an integer or 'mean'",
    "alignment_head": "an integer or 'mean'",
    "alignment_units": "a string",
}
_DECODING_KEYS = [field.name for field in dataclasses.fields(DecodingOptions)]
_SEED_RANGE = (-(2**63), 2**63)  # what jax.random.key takes


def _is_kind(value: Any, kind: str) -> bool:
    """Whether `value` (from json.loads) is of `kind`, one of _KINDS' values."""
    if kind == "a string":
        return isinstance(value, str)
    if kind == "a list of strings":
        return isinstance(value, list) and all(isinstance(each, str) for each in value)
    if kind == "an integer":
        return checks.is_int(value)
    if kind == "a number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "a boolean":
        return isinstance(value, bool)
    if kind == "an integer or null":
        return value is None or checks.is_int(value)
    return checks.is_int(value) or value == "mean"  # "an integer or 'mean'"


def _json_type(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    names.update({list: "a list", dict: "an object", type(None): "null"})
    return names.get(type(value), type(value).__name__)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    for key in keys:
        if keys.count(key) > 1:
            raise RequestError(400, f"the request body has the key {key!r} twice")
    return dict(pairs)


def read_json_object(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object; RequestError(400) with the reason otherwise."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise RequestError(
            400,
            f"the request body is not UTF-8 (byte {error.start + 1} is "
            f"0x{body[error.start]:02x}: {error.reason})",
        ) from None
    try:
        value = json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as error:
        raise RequestError(400, f"the request body is not JSON ({error})") from None
    except RecursionError:
        raise RequestError(400, "the request body is not JSON (nested too deeply)") from None
    if not isinstance(value, dict):
        raise RequestError(
            400,
            f'the request body must be a JSON object such as {{"text": "..."}}, got '
            f"{_json_type(value)}",
        )
    return value


# ---------------------------------------------------------------------------------------------
# The model behind the server
# ---------------------------------------------------------------------------------------------
class Translator:
    """A loaded run (`train.workdir.load_run`) and its vocabulary: checks requests against the
    model, decodes lines (`decode`, the Batcher's function: on the worker thread only) and
    writes the response records. `batch_size`: the most lines `decode` is given at once (the
    Batcher's); a batch of fewer has the rows of the next power of two."""

    def __init__(
        self,
        run,
        vocabulary,
        *,
        defaults: DecodingOptions,
        limits: Limits,
        batch_size: int = 64,
    ) -> None:
        self.run, self.vocabulary = run, vocabulary
        self.config = run.model_config
        self.defaults, self.limits, self.batch_size = defaults, limits, batch_size
        self.parse({"text": ""}, check_texts=False)  # bad defaults fail here, before serving

    # --- checking requests ---------------------------------------------------------------
    def parse(self, body: dict[str, Any], *, check_texts: bool = True) -> TranslationRequest:
        """A request's JSON object -> TranslationRequest; RequestError(422) naming the first
        problem (`check_texts` False: the options alone)."""
        for key, value in body.items():
            if key not in _KINDS:
                raise RequestError(422, f"unknown key {key!r}; the keys are {', '.join(_KINDS)}")
            if not _is_kind(value, _KINDS[key]):
                raise RequestError(
                    422, f"{key} must be {_KINDS[key]}, got {_json_type(value)}: {value!r}"[:300]
                )
        texts = self._texts(body) if check_texts else []
        options = self._options(body)
        alignments = body.get("alignments", False)
        attention = body.get("attention", "none")
        alignment = None
        if alignments or attention != "none":
            try:
                alignment = AlignmentOptions(
                    layer=body.get("alignment_layer", -1),
                    head=body.get("alignment_head", "mean"),
                    units=body.get("alignment_units", "word"),
                    attention=attention,
                )
                alignment.selection(self.config)  # a layer or head the model lacks
            except ValueError as error:
                raise RequestError(422, str(error)) from None
        else:
            for key in ("alignment_layer", "alignment_head", "alignment_units"):
                if key in body:
                    raise RequestError(
                        422, f'{key} needs "alignments": true or an "attention" other than none'
                    )
        return TranslationRequest(texts, options, alignments, alignment)

    def _texts(self, body: dict[str, Any]) -> list[str]:
        if ("text" in body) == ("texts" in body):
            raise RequestError(422, 'give either "text" (a string) or "texts" (a list of strings)')
        if "text" in body:
            texts, names = [body["text"]], ["text"]
        else:
            texts = body["texts"]
            names = [f"texts[{index}]" for index in range(len(texts))]
            if not texts:
                raise RequestError(422, "texts is empty: give at least one text")
            if len(texts) > self.limits.max_texts:
                raise RequestError(
                    422, f"{len(texts)} texts, more than --max_texts={self.limits.max_texts}"
                )
        for name, text in zip(names, texts, strict=True):
            if not text.strip():
                raise RequestError(422, f"{name} is empty")
        problems = run_line_problems(self.run, self.vocabulary, texts)
        if problems:
            index = min(problems)
            raise RequestError(422, f"{names[index]}: {problems[index]}")
        return texts

    def _options(self, body: dict[str, Any]) -> DecodingOptions:
        given = {key: body[key] for key in _DECODING_KEYS if key in body}
        try:
            options = dataclasses.replace(self.defaults, **given)
            checks.check_top_k(self.config, options.top_k)
            if options.max_length is not None:
                checks.resolve_max_length(self.config, 1, options.max_length)
        except ValueError as error:
            raise RequestError(422, str(error)) from None
        if options.beam_size > self.limits.max_beam_size:
            raise RequestError(
                422,
                f"beam_size must be at most --max_beam_size={self.limits.max_beam_size}, got "
                f"{options.beam_size}",
            )
        if not _SEED_RANGE[0] <= options.seed < _SEED_RANGE[1]:
            raise RequestError(422, f"seed must be a 64-bit integer, got {options.seed}")
        return options

    def key(self, request: TranslationRequest) -> BatchKey:
        attention = None
        if request.alignment is not None:
            attention = request.alignment.decoded_selection(self.config)
        return BatchKey(request.options, attention)

    # --- decoding (the worker thread) ----------------------------------------------------
    def decode(self, lines: list[str], key: BatchKey, first_batch_index: int) -> list[Translation]:
        """The Batcher's decode function: `translate_lines_in_detail` of one batch (at most
        `batch_size` lines)."""
        if len(lines) > self.batch_size:
            raise ValueError(f"{len(lines)} lines for a batch of {self.batch_size}")
        return translate_lines_in_detail(
            self.run,
            self.vocabulary,
            lines,
            key.options,
            self.batch_size,
            attention=key.attention,
            first_batch_index=first_batch_index,
        )

    def warm_up(self, buckets: int) -> tuple[list[int], list[int]]:
        """Compile the default options' decoder for every row count a batch can have (powers
        of two up to `batch_size`, and `batch_size`) at the `buckets` shortest bucket lengths;
        returns (the row counts, the lengths) compiled."""
        from train.data.run_data import eval_bucket_lengths

        batch_size = self.batch_size
        rows = sorted({1 << power for power in range(batch_size.bit_length())} | {batch_size})
        rows = [count for count in rows if count <= batch_size]
        lengths = eval_bucket_lengths(self.config.max_len)[: max(buckets, 0)]
        for length in lengths:
            for count in rows:
                source = np.full((count, length), self.vocabulary.pad_id, np.int32)
                source[:, 0] = self.vocabulary.eos_id
                decode_batch(
                    self.config,
                    self.run.params,
                    source,
                    bos_id=self.vocabulary.bos_id,
                    eos_id=self.vocabulary.eos_id,
                    options=self.defaults,
                )
        return rows, lengths

    # --- answers -------------------------------------------------------------------------
    def records(
        self, request: TranslationRequest, translations: list[Translation]
    ) -> list[dict[str, Any]]:
        """train.translate's JSON line of each text (`json_line`), in order."""
        records = []
        for index, (text, translation) in enumerate(zip(request.texts, translations, strict=True)):
            links = None
            if request.alignments:
                links = alignment_links(
                    translation, self.vocabulary, self.config, request.alignment
                )
            records.append(
                json_line(
                    index + 1,
                    text,
                    translation,
                    self.vocabulary,
                    self.config,
                    links,
                    request.alignment,
                )
            )
        return records

    def model_info(self) -> dict[str, Any]:
        config = self.config
        return {
            "encoder_layers": config.num_encoder_layers,
            "decoder_layers": config.num_decoder_layers,
            "heads": config.num_heads,
            "d_model": config.d_model,
            "vocab_size": config.vocab_size,
            "max_len": config.max_len,
        }


# ---------------------------------------------------------------------------------------------
# The HTTP application
# ---------------------------------------------------------------------------------------------
def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps({"error": cli.one_line(message)}, ensure_ascii=False)
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def _json(value: Any) -> Response:
    body = json.dumps(value, ensure_ascii=False, allow_nan=False)
    return Response(body, media_type="application/json")


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, read no further than `limit` bytes (RequestError(413) past it)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RequestError(
            413, f"the request body is {declared} bytes, more than --max_request_bytes={limit}"
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(
                413, f"the request body is more than --max_request_bytes={limit} bytes"
            )
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(translator: Translator, batcher: Batcher) -> FastAPI:
    """The FastAPI application of the endpoints in the module docstring. Its lifespan starts
    and stops `batcher` (whose decode function is normally `translator.decode`)."""
    page = importlib.resources.files("train").joinpath(PAGE).read_text(encoding="utf-8")

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        batcher.start()
        try:
            yield
        finally:
            await run_in_threadpool(batcher.stop)  # joins the worker: not on the event loop

    # No /docs, /redoc, /openapi.json: their pages load scripts from a CDN.
    api = FastAPI(
        title="flax-transformer", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )

    @api.exception_handler(RequestValidationError)
    async def validation_error(_: Request, error: RequestValidationError):
        problems = [
            f"{'.'.join(map(str, each.get('loc', ())))}: {each.get('msg', '')}"
            for each in error.errors()
        ]
        return _error(422, "; ".join(problems) or "invalid request")

    @api.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):
        if error.status_code == 404:
            return _error(404, f"no such endpoint: {request.url.path}")
        if error.status_code == 405:
            return _error(405, f"{request.method} is not allowed on {request.url.path}")
        return _error(error.status_code, str(error.detail))

    @api.exception_handler(Exception)
    async def internal_error(_: Request, error: Exception):
        return _error(500, f"internal error: {cli.describe(error).message}")

    @api.post("/translate")
    async def translate(request: Request):
        try:
            body = await _read_body(request, translator.limits.max_request_bytes)
            # Tokenizing (to check lengths) and writing records take the CPU: not on the loop.
            parsed = await run_in_threadpool(lambda: translator.parse(read_json_object(body)))
            key = translator.key(parsed)
            future = batcher.submit(parsed.texts, key, alone=parsed.options.method == "sample")
        except RequestError as error:
            return _error(error.status, str(error))
        except (QueueFullError, StoppedError) as error:
            return _error(503, str(error), headers={"Retry-After": "1"})
        try:
            translations = await asyncio.wrap_future(future)
            records = await run_in_threadpool(translator.records, parsed, translations)
            return _json({"translations": records})
        except StoppedError as error:
            return _error(503, str(error), headers={"Retry-After": "1"})
        except Exception as error:  # a bug (logged by the worker): this request fails alone
            return _error(500, f"internal error: {cli.describe(error).message}")

    @api.get("/health")
    async def health():
        return _json(
            {
                "status": "ok",
                "workdir": str(translator.run.workdir.path),
                "checkpoint": translator.run.describe(),
                "queued_lines": batcher.queued_lines,
                "batches_decoded": batcher.batches_decoded,
                "lines_decoded": batcher.lines_decoded,
            }
        )

    @api.get("/info")
    async def info():
        alignment = AlignmentOptions()
        return _json(
            {
                "model": translator.model_info(),
                "checkpoint": translator.run.describe(),
                "defaults": {
                    **dataclasses.asdict(translator.defaults),
                    "alignment_layer": alignment.layer,
                    "alignment_head": alignment.head,
                    "alignment_units": alignment.units,
                    "attention": alignment.attention,
                },
                "choices": {
                    "method": list(DECODING_METHODS),
                    "attention": list(ATTENTION_OUTPUTS),
                    "alignment_units": list(ALIGNMENT_UNITS),
                },
                "limits": {
                    **dataclasses.asdict(translator.limits),
                    "max_queue": batcher.max_queue,
                    "batch_size": batcher.batch_size,
                    "max_wait_ms": batcher.max_wait_s * 1000,
                    "max_tokens": translator.config.max_len,
                },
            }
        )

    @api.get("/", response_class=HTMLResponse)
    async def index():
        # Nothing but this page's own inline script and style may run or load.
        policy = (
            "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
            "img-src data:"
        )
        return HTMLResponse(page, headers={"Content-Security-Policy": policy})

    return api


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port) (port 0: a free one) for uvicorn to listen on;
    OSError naming the address when it is taken or cannot be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        reason = error.strerror or str(error)
        raise OSError(f"cannot listen on {host}:{port}: {reason}") from None
    except (OverflowError, TypeError) as error:  # a port out of range
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port}: {error}") from None
    sock.set_inheritable(True)
    return sock


def uvicorn_server(api, *, access_log: bool = False):
    """A uvicorn.Server of `api` (run it with `.run(sockets=[listening_socket(...)])`)."""
    import uvicorn

    config = uvicorn.Config(api, log_level="warning", access_log=access_log, lifespan="on")
    return uvicorn.Server(config)


@contextlib.contextmanager
def _stop_quietly() -> Iterator[None]:
    """After its graceful shutdown uvicorn raises again the signal that stopped it (SIGINT,
    SIGTERM); these handlers take it: the server stopped as asked, status 0."""
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _check_flags() -> None:
    if not 0 <= _PORT.value <= 65535:
        raise app.UsageError(f"--port must be in [0, 65535], got {_PORT.value}")
    for name in ("max_queue", "max_texts", "max_request_bytes", "max_beam_size", "batch_size"):
        if flags.FLAGS[name].value < 1:
            raise app.UsageError(f"--{name} must be >= 1, got {flags.FLAGS[name].value}")
    if _MAX_TEXTS.value > _MAX_QUEUE.value:
        raise app.UsageError(
            f"--max_texts={_MAX_TEXTS.value} is more than --max_queue={_MAX_QUEUE.value}: such "
            "a request could never be queued"
        )
    if not 0 <= _MAX_WAIT_MS.value <= 10_000:
        raise app.UsageError(f"--max_wait_ms must be in [0, 10000], got {_MAX_WAIT_MS.value}")
    if _WARM_UP_BUCKETS.value < 0:
        raise app.UsageError(f"--warm_up_buckets must be >= 0, got {_WARM_UP_BUCKETS.value}")
    # train.translate's own flags are defined here too (this module imports it): refuse them.
    # Alignments are per request (the keys "alignments", "alignment_layer", ...).
    translate_flags = [
        *flags.FLAGS.get_flags_for_module("train.translate"),
        *flags.FLAGS.get_flags_for_module("train.alignment_flags"),
    ]
    for flag in translate_flags:
        if flag.present:
            raise app.UsageError(f"--{flag.name} is a flag of train.translate, not train.serve")


def _print(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    _check_flags()
    defaults = inference_flags.options()
    limits = Limits(_MAX_TEXTS.value, _MAX_REQUEST_BYTES.value, _MAX_BEAM_SIZE.value)
    # Bound before the slow start, so that a taken port fails at once; connections are refused
    # until the warm-up is done.
    sock = listening_socket(_HOST.value, _PORT.value)
    compilation_cache.enable_from_flags()
    run = inference_flags.trained_run()
    vocabulary = run.workdir.vocabulary(run.config)
    translator = Translator(
        run,
        vocabulary,
        defaults=defaults,
        limits=limits,
        batch_size=inference_flags.BATCH_SIZE.value,
    )
    if _WARM_UP_BUCKETS.value:
        start = time.monotonic()
        rows, lengths = translator.warm_up(_WARM_UP_BUCKETS.value)
        shapes = f"{', '.join(map(str, rows))} rows of {', '.join(map(str, lengths))} tokens"
        _print(
            f"compiled {defaults.describe()} for batches of {shapes} in "
            f"{time.monotonic() - start:.1f}s"
        )
    batcher = Batcher(
        translator.decode,
        batch_size=translator.batch_size,
        max_wait_s=_MAX_WAIT_MS.value / 1000,
        max_queue=_MAX_QUEUE.value,
    )
    server = uvicorn_server(create_app(translator, batcher), access_log=_ACCESS_LOG.value)
    sock.listen(2048)  # from here on connections wait for uvicorn instead of being refused
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    _print(
        f"serving {run.workdir.path} ({run.describe()}, {defaults.describe()}) on "
        f"http://{shown}:{port}/ (Ctrl-C to stop)"
    )
    with _stop_quietly():
        server.run(sockets=[sock])
    _print("stopped")
    return 0


if __name__ == "__main__":
    cli.run(main)
