"""Multi-process runs on JAX's own distributed runtime (`jax.distributed`).

    joined = initialize_from_flags(coordinator_address, num_processes, process_id)  # first!
    if is_main_process(): write files ...
    barrier("tokenizer")                     # everyone waits for process 0's files
    agree("resume step", step)               # every process holds the same value, or error
    all_true("checkpoint read", ok)          # True on every process iff every process passed True
    outputs = gather_to_main("decoded", mine)  # process 0: every process's payload; else None

One process is the default and needs nothing: `initialize_from_flags()` with no flags, no
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID and no cluster environment does not
call `jax.distributed.initialize`, and every helper here is then a no-op (or the identity).

Where the three values come from, first match wins:
  flags                 --coordinator_address=HOST:PORT --num_processes=N --process_id=I
  environment           JAX_COORDINATOR_ADDRESS (read by jax itself), JAX_NUM_PROCESSES and
                        JAX_PROCESS_ID (this project's, the same names in the same style)
  cluster detection     jax's own (`jax._src.clusters`): SLURM (srun), Open MPI (mpirun), Cloud
                        TPU pods (GCE / GKE), Kubernetes; then `jax.distributed.initialize` is
                        called with what was given (often nothing) and jax fills in the rest.

Failure modes are bounded in time:
  * unreachable or wrong coordinator, or fewer processes than the coordinator waits for: a
    watchdog ends the process with a one-line error after `initialization_timeout` seconds
    (jax's own timeout, a little later, would abort with a C++ stack trace instead);
  * processes that disagree on the process count: `agree` on it right after joining;
  * a peer that dies mid-run: jax's coordination service notices the missing heartbeats within
    `heartbeat_timeout` seconds (at once if the coordinator itself died) and terminates every
    other process (SIGABRT, "Terminating process because the JAX distributed service detected
    fatal errors ... another task died").

The barriers and the key-value exchange use the distributed client of `jax.distributed` (the
coordination service, not device collectives): they need no compilation and take a timeout.
There is no public accessor for that client; orbax reaches it the same way.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from typing import Any

import jax

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"  # jax reads this one itself
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"
# Waits for something another process does first (training the tokenizer, decoding, scoring):
# long, but finite, so a stuck peer ends the run instead of hanging it.
DEFAULT_WAIT_S = 3600
# jax's own initialization timeout is set this much later than the watchdog's, as a backstop.
_JAX_TIMEOUT_MARGIN_S = 30

_counter = 0  # makes every barrier and key unique (a key-value key can be set only once)


class DistributedSetupError(ValueError):
    """Joining the multi-process run failed; the message is one line naming the problem."""


def _client() -> Any:
    from jax._src import distributed as jax_distributed  # no public accessor (see module doc)

    return jax_distributed.global_state.client


def _from_env(name: str) -> int | None:
    value = os.environ.get(name, "")
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise DistributedSetupError(f"{name}={value!r} is not an integer") from None


def detected_cluster() -> str | None:
    """The name of the cluster environment jax's own detection finds ("slurm", "ompi", TPU,
    ...) when it holds more than one process, else None. Mirrors
    `jax._src.clusters.ClusterEnv.auto_detect_unset_distributed_params` (opt-in methods such as
    mpi4py are left out, as jax leaves them out without `cluster_detection_method`)."""
    try:
        from jax._src.clusters import ClusterEnv
    except ImportError:  # jax moved it: no auto-detection, flags and env still work
        return None
    for env in ClusterEnv._cluster_types:
        try:
            if env.opt_in_only_method or not env.is_env_present():
                continue
            if env.get_process_count() > 1:
                return env.name or env.__name__
        except Exception:  # a probe that fails means "not this environment"
            continue
    return None


def _check_address(address: str) -> None:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DistributedSetupError(
            f"coordinator address {address!r} is not HOST:PORT (e.g. 10.0.0.1:1234)"
        )


def initialize_from_flags(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    initialization_timeout: int = 300,
    heartbeat_timeout: int = 100,
    shutdown_timeout: int = 300,
) -> bool:
    """Join a multi-process run if one is asked for; returns whether `jax.distributed` was
    initialized. Must run before anything touches devices (jax.devices(), any computation).

    Args take precedence over the environment (see the module doc); None means unset.
    Timeouts are in seconds: `initialization_timeout` for every process to connect,
    `heartbeat_timeout` after which a silent process counts as dead (and the others are
    terminated), `shutdown_timeout` for the processes to meet at exit.

    Raises:
      DistributedSetupError: incomplete or invalid values, jax already started, or the
        processes disagree on the process count. An unreachable coordinator ends the process
        (status 1) with a one-line message after `initialization_timeout` seconds.
    """
    address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
    count = num_processes if num_processes is not None else _from_env(ENV_NUM_PROCESSES)
    index = process_id if process_id is not None else _from_env(ENV_PROCESS_ID)
    for name, value in (
        ("initialization_timeout", initialization_timeout),
        ("heartbeat_timeout", heartbeat_timeout),
        ("shutdown_timeout", shutdown_timeout),
    ):
        if value <= 0:
            raise DistributedSetupError(
                f"--{name} must be a positive number of seconds, got {value}"
            )
    cluster = None
    if address is None and count is None and index is None:
        cluster = detected_cluster()
        if cluster is None:
            return False  # one process: the default, nothing to join
    elif count == 1 and index in (None, 0):
        return False  # --num_processes=1 is one process too
    else:
        missing = [
            flag
            for flag, value in (
                ("--coordinator_address", address),
                ("--num_processes", count),
                ("--process_id", index),
            )
            if value is None
        ]
        if missing and (cluster := detected_cluster()) is not None:
            pass  # jax's cluster detection fills in what is unset
        elif missing:
            raise DistributedSetupError(
                f"a multi-process run needs {', '.join(missing)} too (or {ENV_COORDINATOR}, "
                f"{ENV_NUM_PROCESSES}, {ENV_PROCESS_ID}); give all three on every process"
            )
        if address is not None:
            _check_address(address)
        if count is not None and count < 1:
            raise DistributedSetupError(f"--num_processes must be >= 1, got {count}")
        if count is not None and index is not None and not 0 <= index < count:
            raise DistributedSetupError(
                f"--process_id must be in [0, {count - 1}] for --num_processes={count}, got {index}"
            )
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        raise DistributedSetupError(
            "JAX has already started its devices; join the multi-process run first "
            "(initialize_from_flags before any jax.devices() or computation)"
        )

    where = f"the {cluster} cluster" if cluster else f"{address} as process {index} of {count}"
    watchdog = threading.Timer(
        initialization_timeout,
        _give_up,
        args=(
            f"error: could not join the multi-process run ({where}) within "
            f"--initialization_timeout={initialization_timeout}s: the coordinator (process 0) "
            "is unreachable at that address, or not every process has started, or the "
            "processes disagree on --num_processes",
        ),
    )
    watchdog.daemon = True
    watchdog.start()
    try:
        jax.distributed.initialize(
            coordinator_address=address,
            num_processes=count,
            process_id=index,
            initialization_timeout=initialization_timeout + _JAX_TIMEOUT_MARGIN_S,
            heartbeat_timeout_seconds=heartbeat_timeout,
            shutdown_timeout_seconds=shutdown_timeout,
        )
        # The coordinator only counts the processes that process 0 announced: a process that
        # was told another count joins without complaint. Compare them once, with a timeout.
        agree("process count", _ids()[1], timeout_s=initialization_timeout)
    except DistributedSetupError:
        raise
    except (RuntimeError, ValueError, TypeError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise DistributedSetupError(
            f"joining the multi-process run ({where}): {first_line}"
        ) from None
    finally:
        watchdog.cancel()
    return True


def _give_up(message: str) -> None:
    """End the process from a watchdog thread: print one line and exit with status 1 (the
    main thread may be blocked inside jax, where an exception could not reach it)."""
    print(message, file=sys.stderr, flush=True)
    os._exit(1)


def _ids() -> tuple[int, int]:
    """(this process's id, process count) as given to jax.distributed; (0, 1) without it.
    Read from the distributed state, not the backend: checking the count must not start the
    devices, whose start-up waits for every process of the (possibly wrong) count."""
    from jax._src import distributed as jax_distributed

    state = jax_distributed.global_state
    if state.client is None:
        return 0, 1
    return state.process_id, state.num_processes


def is_multiprocess() -> bool:
    """Whether this process is one of several (jax.distributed initialized with N > 1)."""
    return _ids()[1] > 1


def is_main_process() -> bool:
    """Process 0, the one that writes logs, metrics, config.json and the tokenizer."""
    return jax.process_index() == 0


def _unique(name: str) -> str:
    global _counter
    _counter += 1
    return f"flax_transformer/{_counter}/{name.replace(' ', '_')}"


def barrier(name: str, *, timeout_s: float = DEFAULT_WAIT_S) -> None:
    """Block until every process reaches the barrier `name` (call it on every process, in the
    same order); raise DistributedSetupError after `timeout_s`. No-op with one process."""
    if not is_multiprocess():
        return
    try:
        _client().wait_at_barrier(_unique(name), int(timeout_s * 1000))
    except Exception as error:  # jax raises its own runtime error type
        raise DistributedSetupError(
            f"waiting for every process at {name!r} (up to {timeout_s:.0f}s): "
            f"{str(error).strip().splitlines()[0] if str(error).strip() else error!r}"
        ) from None


def agree(name: str, value: Any, *, timeout_s: float = DEFAULT_WAIT_S) -> None:
    """Raise DistributedSetupError unless every process passes the same JSON-able `value`.

    Each process publishes its value; every process then compares process 0's with its own and
    process 0 compares everyone's, so that a disagreement stops all of them with one message.
    """
    if not is_multiprocess():
        return
    key = _unique(name)
    index, count = _ids()
    own = json.dumps(value, sort_keys=True)
    _client().key_value_set(f"{key}/{index}", own)
    others = list(range(count)) if index == 0 else [0]
    for process, value_there in zip(others, _read_each(key, others, name, timeout_s), strict=True):
        theirs = json.dumps(value_there, sort_keys=True)
        if theirs != own:
            raise DistributedSetupError(
                f"the processes disagree on the {name}: process {index} has "
                f"{own}, process {process} has {theirs}"
            )


def _read_each(key: str, processes: Any, name: str, timeout_s: float) -> list:
    """The JSON values that `processes` published under `key`, in their order."""
    client = _client()
    values = []
    for process in processes:
        try:
            raw = client.blocking_key_value_get(f"{key}/{process}", int(timeout_s * 1000))
        except Exception:
            raise DistributedSetupError(
                f"process {process} did not send its {name} within {timeout_s:.0f}s (it is not "
                "running, or the processes disagree on --num_processes)"
            ) from None
        values.append(json.loads(raw))
    return values


def all_true(name: str, value: bool, *, timeout_s: float = DEFAULT_WAIT_S) -> bool:
    """Whether every process passes True (each learns every other's value: all return the same
    answer). One process: `value`."""
    if not is_multiprocess():
        return bool(value)
    key = _unique(name)
    index, count = _ids()
    _client().key_value_set(f"{key}/{index}", json.dumps(bool(value)))
    return all(_read_each(key, range(count), name, timeout_s))


def gather_to_main(name: str, payload: Any, *, timeout_s: float = DEFAULT_WAIT_S) -> list | None:
    """Every process's JSON-able `payload`, in process order, on process 0; None elsewhere.

    For small host data (decoded sentences): it travels through the coordination service's
    key-value store, not the devices. One process: `[payload]`.
    """
    if not is_multiprocess():
        return [payload]
    key = _unique(name)
    index, count = _ids()
    _client().key_value_set(f"{key}/{index}", json.dumps(payload))
    if not is_main_process():
        return None
    return _read_each(key, range(count), name, timeout_s)


__all__ = [
    "DistributedSetupError",
    "agree",
    "all_true",
    "barrier",
    "detected_cluster",
    "gather_to_main",
    "initialize_from_flags",
    "is_main_process",
    "is_multiprocess",
]
