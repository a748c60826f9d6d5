"""train.serve without a model: the Batcher's batches (which lines, in which order, with which
batch index), its bounded queue and its failures, with a decode function that records its
calls; and the reading of request bodies. The server with a model, its page and the command
are tested in tests/end_to_end/test_serve.py."""

from __future__ import annotations

import fnmatch
import importlib.resources
import re
import threading
import tomllib
from pathlib import Path

import pytest

from train.evaluation import DecodingOptions
from train.serve import (
    PAGE,
    Batcher,
    BatchKey,
    QueueFullError,
    RequestError,
    StoppedError,
    listening_socket,
    read_json_object,
)

GREEDY = BatchKey(DecodingOptions(method="greedy"))
BEAM = BatchKey(DecodingOptions(method="beam"))
SAMPLE = BatchKey(DecodingOptions(method="sample", seed=1))
TIMEOUT = 10  # seconds; every wait here is for a thread that has nothing else to do


class RecordingDecode:
    """A decode function: returns each line upper-cased and records (lines, key, batch index)
    of every call. The first call waits for `release` (set it to let the worker go on), so
    that the test can queue requests while the worker is busy."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.calls: list[tuple[list[str], BatchKey, int]] = []
        self.busy, self.release = threading.Event(), threading.Event()
        self.fail_on = fail_on

    def __call__(self, lines: list[str], key: BatchKey, first_batch_index: int) -> list[str]:
        self.calls.append((list(lines), key, first_batch_index))
        if len(self.calls) == 1:
            self.busy.set()
            assert self.release.wait(TIMEOUT)
        if self.fail_on in lines:
            raise RuntimeError(f"cannot decode {self.fail_on!r}")
        return [line.upper() for line in lines]


@pytest.fixture
def decode():
    return RecordingDecode()


def started(decode, **kwargs) -> Batcher:
    """A running Batcher whose worker is busy with a first request ("gate")."""
    settings = dict(batch_size=4, max_wait_s=0.0, max_queue=100) | kwargs
    batcher = Batcher(decode, **settings)
    batcher.start()
    gate = batcher.submit(["gate"], GREEDY)
    assert decode.busy.wait(TIMEOUT)
    batcher.gate = gate
    return batcher


def finish(batcher: Batcher, decode: RecordingDecode, *futures) -> list:
    decode.release.set()
    results = [future.result(TIMEOUT) for future in futures]
    assert batcher.gate.result(TIMEOUT) == ["GATE"]
    batcher.stop()
    return results


def batches(decode: RecordingDecode) -> list[list[str]]:
    return [lines for lines, _, _ in decode.calls[1:]]  # after the gate


def test_requests_waiting_together_share_one_batch(decode) -> None:
    batcher = started(decode)
    futures = [batcher.submit([text], GREEDY) for text in ("a", "b", "c")]
    assert batcher.queued_lines == 3
    assert finish(batcher, decode, *futures) == [["A"], ["B"], ["C"]]
    assert batches(decode) == [["a", "b", "c"]]
    assert (batcher.batches_decoded, batcher.lines_decoded) == (2, 4)


def test_a_line_waits_up_to_max_wait_for_others() -> None:
    decode = RecordingDecode()
    decode.release.set()  # nothing held: the worker takes the first line at once
    batcher = Batcher(decode, batch_size=4, max_wait_s=2.0, max_queue=10)
    batcher.start()
    first = batcher.submit(["a"], GREEDY)
    assert decode.busy.wait(0.1) is False  # still waiting for company
    second = batcher.submit(["b", "c", "d"], GREEDY)  # fills the batch: no more waiting
    assert first.result(TIMEOUT) == ["A"] and second.result(TIMEOUT) == ["B", "C", "D"]
    batcher.stop()
    assert [lines for lines, _, _ in decode.calls] == [["a", "b", "c", "d"]]


def test_a_long_request_does_not_hold_up_a_short_one_beyond_one_batch(decode) -> None:
    batcher = started(decode)
    long = batcher.submit([f"l{i}" for i in range(10)], GREEDY)
    short = batcher.submit(["s0", "s1"], GREEDY)
    later = batcher.submit(["t0"], GREEDY)
    results = finish(batcher, decode, long, short, later)
    assert results == [[f"L{i}" for i in range(10)], ["S0", "S1"], ["T0"]]
    # One line from each request in turn; the long one then goes to the back of the line.
    assert batches(decode) == [
        ["l0", "s0", "t0", "l1"],
        ["l2", "s1", "l3", "l4"],
        ["l5", "l6", "l7", "l8"],
        ["l9"],
    ]


def test_requests_with_other_options_are_batched_apart_and_take_turns(decode) -> None:
    batcher = started(decode)
    greedy = batcher.submit(["g0", "g1", "g2", "g3", "g4", "g5"], GREEDY)
    beam = batcher.submit(["b0"], BEAM)
    greedy_too = batcher.submit(["g6"], GREEDY)
    finish(batcher, decode, greedy, beam, greedy_too)
    assert [(lines, key) for lines, key, _ in decode.calls[1:]] == [
        (["g0", "g6", "g1", "g2"], GREEDY),
        (["b0"], BEAM),
        (["g3", "g4", "g5"], GREEDY),
    ]


def test_sampling_requests_are_decoded_alone_in_order_with_their_batch_index(decode) -> None:
    batcher = started(decode, batch_size=2)
    first = batcher.submit(["a", "b", "c", "d", "e"], SAMPLE, alone=True)
    second = batcher.submit(["x", "y"], SAMPLE, alone=True)
    greedy = batcher.submit(["g"], GREEDY)
    assert finish(batcher, decode, first, second, greedy)[0] == ["A", "B", "C", "D", "E"]
    assert [(lines, index) for lines, _, index in decode.calls[1:]] == [
        (["a", "b"], 0),
        (["x", "y"], 0),
        (["g"], 0),
        (["c", "d"], 1),
        (["e"], 2),
    ]


def test_a_full_queue_refuses_a_request_and_takes_one_again_once_it_drained(decode) -> None:
    batcher = started(decode, max_queue=3)
    queued = batcher.submit(["a", "b"], GREEDY)  # the gate's line is the worker's: not queued
    with pytest.raises(QueueFullError, match=r"2 lines are waiting .* brings 2 \(--max_queue=3\)"):
        batcher.submit(["c", "d"], GREEDY)
    one_more = batcher.submit(["c"], GREEDY)
    decode.release.set()
    assert queued.result(TIMEOUT) == ["A", "B"] and one_more.result(TIMEOUT) == ["C"]
    assert batcher.submit(["d", "e", "f"], GREEDY).result(TIMEOUT) == ["D", "E", "F"]
    finish(batcher, decode)


def test_a_failing_batch_fails_its_requests_and_the_worker_goes_on() -> None:
    decode = RecordingDecode(fail_on="bad")
    batcher = started(decode)
    failing = batcher.submit(["ok", "bad"], GREEDY)
    beam = batcher.submit(["fine"], BEAM)
    decode.release.set()
    with pytest.raises(RuntimeError, match="cannot decode 'bad'"):
        failing.result(TIMEOUT)
    assert beam.result(TIMEOUT) == ["FINE"]
    assert batcher.submit(["again"], GREEDY).result(TIMEOUT) == ["AGAIN"]
    finish(batcher, decode)


def test_a_cancelled_request_leaves_the_queue(decode) -> None:
    batcher = started(decode)
    cancelled = batcher.submit(["x", "y"], GREEDY)
    kept = batcher.submit(["z"], GREEDY)
    assert cancelled.cancel()
    assert finish(batcher, decode, kept) == [["Z"]]
    assert batches(decode) == [["z"]]


def test_stopping_fails_the_waiting_requests_and_refuses_new_ones(decode) -> None:
    batcher = started(decode)
    waiting = batcher.submit(["a"], GREEDY)
    threading.Timer(0.2, decode.release.set).start()
    batcher.stop()  # joins the worker once its batch (the gate) is decoded
    assert batcher.gate.result(TIMEOUT) == ["GATE"]
    with pytest.raises(StoppedError, match="shutting down"):
        waiting.result(TIMEOUT)
    with pytest.raises(StoppedError, match="not running"):
        batcher.submit(["b"], GREEDY)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"text": "\xff"}', r"not UTF-8 \(byte 11 is 0xff: invalid start byte\)"),
        (b'{"text": ', r"not JSON \(Expecting value: line 1 column 10 \(char 9\)\)"),
        (b"", r"not JSON \(Expecting value"),
        (b'["a"]', "must be a JSON object such as .*, got a list"),
        (b'"a"', "got a string"),
        (b'{"text": "a", "text": "b"}', "has the key 'text' twice"),
        (b"[" * 100_000, r"not JSON \(nested too deeply\)"),
    ],
)
def test_bodies_that_are_not_json_objects_are_400(body: bytes, message: str) -> None:
    with pytest.raises(RequestError, match=message) as raised:
        read_json_object(body)
    assert raised.value.status == 400 and "\n" not in str(raised.value)


def test_a_json_object_is_read_as_it_is() -> None:
    body = '{"texts": ["Grüße", "\\u00e9"], "seed": 3}'.encode()
    assert read_json_object(body) == {"texts": ["Grüße", "é"], "seed": 3}


def test_a_taken_port_is_named_in_one_line() -> None:
    with listening_socket("127.0.0.1", 0) as taken:
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError) as raised:
            listening_socket("127.0.0.1", port)
    assert str(raised.value) == f"cannot listen on 127.0.0.1:{port}: Address already in use"
    with pytest.raises(ValueError, match="cannot listen on 127.0.0.1:70000: "):
        listening_socket("127.0.0.1", 70000)


def test_the_page_is_package_data_and_loads_nothing_from_elsewhere() -> None:
    page = importlib.resources.files("train").joinpath(PAGE)
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["train"]
    assert page.is_file() and any(fnmatch.fnmatch(PAGE, pattern) for pattern in patterns)
    text = page.read_text(encoding="utf-8")
    # The one URL is SVG's namespace, a name that nothing fetches.
    assert set(re.findall(r"https?://[^\s\"'<>)]+", text)) == {"http://www.w3.org/2000/svg"}
    assert re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", text) == ["data:,"]
    assert "url(" not in text and "@import" not in text
    assert re.findall(r"fetch\(\s*\"([^\"]*)\"", text) == ["/info", "/translate"]
