"""Parallel, resumable parameter sweeps (issue 7).

A *sweep* is a grid of *cells*.  Each cell is a pure function of its parameters: a picklable
top-level function ``fn`` and a dict ``params`` of plain data (numbers, strings, None, lists,
dicts, NumPy arrays; seeds are parameters like any other), and its result is ``fn(**params)``.
:func:`run_sweep` computes every cell of a grid

* in this process (the default; ``threads=k`` runs k cells at a time on Python threads),
* on an embedded Dask ``LocalCluster`` of ``workers=N`` single-threaded worker *processes*,
  started on demand and shut down at the end, or
* on an existing Dask cluster, ``scheduler="tcp://host:8786"`` (any number of machines),

and returns the results **in grid order**, whatever the executor, the number of workers or the
order in which cells finish.  Every cell runs with single-threaded BLAS, so its result has the
same bits on every executor (tested: serial vs a 2-process cluster, and with a worker killed
mid-sweep).

Resuming
    With ``cells_dir``, each finished cell is written there as soon as it finishes, as one file
    ``<key>.pkl`` (a pickle of ``{"key", "fn", "params", "result", ...}``) written to a temporary
    name and moved into place with :func:`os.replace`, so a file is either complete or absent.
    ``key`` is a SHA-256 of the function's qualified name, the canonical form of ``params``
    (floats by their exact hex form, arrays by dtype, shape and bytes) and a fingerprint of the
    installed metastep code: a rerun on the same folder loads the finished cells and computes
    only the missing ones, and a cell computed by other code or with other parameters is never
    reused.  The driver (this process) writes the files, so the workers of a multi-machine
    cluster need no shared file system; they need the same metastep code, which is checked
    when the sweep connects (``check_code``).  The files are pickles: load only folders you wrote.

Failures
    A worker process that dies (killed, out of memory, machine lost) costs only the cells it
    held: the Dask scheduler re-runs them on the remaining or restarted workers, and since
    results are collected by key, none is lost or duplicated.  A cell that raises is retried
    ``retries`` times, then the sweep stops with :class:`SweepError` naming the cell; finished
    cells are already on disk, so a rerun resumes after fixing the cause.

Determinism
    Inside a cell, :func:`cell_threads` says how many threads the cell may use for metastep's
    own batched calls (1 on a Dask worker, None = all cores in-process); metastep's results do
    not depend on the thread count, so this only avoids oversubscription.  OpenBLAS is set to
    one thread around every cell (:func:`metastep.tuning.blas_threads`); Dask's nanny also
    starts workers with ``OMP_NUM_THREADS=1`` etc.

Adopting it in an experiment (e.g. E5–E7)
    1. Write the cell as a top-level function of plain parameters that returns plain data
       (dicts, lists, NumPy arrays), e.g. ``def train_cell(seed, method, noise, quick): ...``.
    2. In ``run(out_dir, quick=False, seed=0, progress=True, workers=None, scheduler=None)``
       build the grid (a list of param dicts) and call::

           res = sweep.run_sweep(train_cell, grid, cells_dir=os.path.join(exp_dir, "cells"),
                                 workers=workers, scheduler=scheduler, progress=progress,
                                 desc="E5 cells")
           for params, result in res.items(): ...

    ``metastep reproduce NAME --workers N / --scheduler ADDRESS`` passes the options to any
    experiment whose ``run`` accepts ``workers`` and ``scheduler`` (checked by signature).

Command line: ``metastep stability --workers 4`` or ``metastep reproduce e3 --scheduler
tcp://10.0.0.5:8786``; see the README for a multi-machine cluster.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import pickle
import sys
import tempfile
import time
import uuid
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

__all__ = ["run_sweep", "SweepResult", "SweepError", "cell_key", "canonical", "cell_threads", "code_fingerprint",
           "validate_executor", "add_cli_arguments", "cli_options", "CELL_FORMAT"]

#: Format tag stored in every cell file.
CELL_FORMAT = "metastep-sweep-cell/1"
#: Seconds to wait for an existing Dask scheduler before giving up (``scheduler=``).
CONNECT_TIMEOUT = 10.0


class SweepError(RuntimeError):
    """A sweep could not complete: a cell failed (after its retries), or the cluster could not
    be reached.  Finished cells are kept in ``cells_dir``."""


# ------------------------------------------------------------------------------------------------
# keys
# ------------------------------------------------------------------------------------------------

def canonical(x: Any) -> Any:
    """A JSON-like, order-stable form of cell parameters used for hashing.

    Accepts None, bool, int, float (written as ``float.hex`` so that every bit counts), str,
    lists/tuples, dicts with str keys (sorted), NumPy scalars and arrays (dtype, shape and a
    SHA-256 of the C-ordered bytes).  Anything else raises ``TypeError``: parameters must be
    plain data so that the key is the same in every process and on every machine."""
    if x is None or isinstance(x, (bool, str)):
        return x
    if isinstance(x, (np.bool_,)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        if isinstance(x, np.floating) and x.dtype != np.float64:
            return {"__scalar__": str(x.dtype), "hex": _value_bytes(np.asarray(x)).hex()}
        return {"__float__": float(x).hex()}
    if isinstance(x, (list, tuple)):
        return [canonical(v) for v in x]
    if isinstance(x, Mapping):
        out = {}
        for k in sorted(x):
            if not isinstance(k, str):
                raise TypeError(f"cell parameter dict keys must be strings; got {k!r}")
            out[k] = canonical(x[k])
        return out
    if isinstance(x, np.ndarray):
        if x.dtype == object:
            raise TypeError("cell parameters cannot hold object arrays")
        a = np.ascontiguousarray(x)
        return {"__array__": a.dtype.str, "shape": list(a.shape),
                "sha256": hashlib.sha256(_value_bytes(a)).hexdigest()}
    raise TypeError(f"cell parameters must be plain data (None, bool, int, float, str, list, dict, numpy "
                    f"array); got {type(x).__name__}")


def _value_bytes(a: np.ndarray) -> bytes:
    """The bytes that carry an array's values: x87 long doubles occupy 16 bytes of which only
    10 hold the number (the padding is arbitrary), so the padding is dropped."""
    if a.dtype.kind in "fc" and a.dtype.base == np.dtype(np.longdouble) and np.finfo(np.longdouble).nmant == 63 \
            and a.dtype.itemsize in (12, 16, 24, 32):
        per = a.dtype.itemsize // (2 if a.dtype.kind == "c" else 1)
        raw = np.frombuffer(a.tobytes(), dtype=np.uint8).reshape(-1, per)[:, :10]
        return raw.tobytes()
    return a.tobytes()


def _fn_name(fn: Callable[..., Any]) -> str:
    mod, qual = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    if not callable(fn) or mod is None or qual is None or "<" in qual:
        raise TypeError(f"a cell function must be a top-level function (picklable by reference); got {fn!r}")
    return f"{mod}:{qual}"


_FINGERPRINT: Optional[str] = None


def code_fingerprint() -> str:
    """SHA-256 (16 hex digits) of the installed metastep package: every ``.py`` file and the
    compiled module.  Part of every cell key, so that results of other code are never reused."""
    global _FINGERPRINT
    if _FINGERPRINT is None:
        root = os.path.dirname(os.path.abspath(__file__))
        h = hashlib.sha256()
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            for f in sorted(filenames):
                if f.endswith((".py", ".so", ".pyd", ".dylib")):
                    p = os.path.join(dirpath, f)
                    h.update(os.path.relpath(p, root).encode())
                    with open(p, "rb") as fh:
                        h.update(hashlib.sha256(fh.read()).digest())
        _FINGERPRINT = h.hexdigest()[:16]
    return _FINGERPRINT


def cell_key(fn: Callable[..., Any], params: Mapping[str, Any], version: str = "") -> str:
    """Stable hash (24 hex digits) of a cell: function name, canonical parameters, ``version``
    and :func:`code_fingerprint`.  The same in every process and on every machine."""
    import json
    text = json.dumps({"fn": _fn_name(fn), "params": canonical(dict(params)), "version": str(version),
                       "code": code_fingerprint()}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


# ------------------------------------------------------------------------------------------------
# running one cell
# ------------------------------------------------------------------------------------------------

_CELL_THREADS: Optional[int] = None


def cell_threads() -> Optional[int]:
    """Threads the running cell may use for metastep's batched calls: 1 on a Dask worker (one
    cell per worker process), ``None`` (all cores) for cells run in this process one at a time.
    Pass it as ``threads=`` to :func:`metastep.metagrad`; results do not depend on it."""
    return _CELL_THREADS


def _run_cell_on_worker(fn: Callable[..., Any], params: Dict[str, Any]) -> Tuple[Any, float]:
    """What a Dask worker runs: the cell with one BLAS thread and ``cell_threads() == 1``."""
    global _CELL_THREADS
    from .tuning import blas_threads
    _CELL_THREADS = 1
    t0 = time.perf_counter()
    with blas_threads(1):
        out = fn(**params)
    return out, time.perf_counter() - t0


def _timed(fn: Callable[..., Any], params: Dict[str, Any]) -> Tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn(**params)
    return out, time.perf_counter() - t0


# ------------------------------------------------------------------------------------------------
# cell files
# ------------------------------------------------------------------------------------------------

def _cell_path(cells_dir: str, key: str) -> str:
    return os.path.join(cells_dir, f"{key}.pkl")


def _write_cell(cells_dir: str, key: str, fn_name: str, params: Dict[str, Any], result: Any,
                seconds: float) -> None:
    record = {"format": CELL_FORMAT, "key": key, "fn": fn_name, "params": params, "result": result,
              "seconds": seconds, "written": time.time()}
    fd, tmp = tempfile.mkstemp(dir=cells_dir, prefix=f".{key}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            pickle.dump(record, fh, protocol=pickle.HIGHEST_PROTOCOL)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, _cell_path(cells_dir, key))
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


_MISSING = object()


def _read_cell(cells_dir: str, key: str) -> Any:
    """The stored result of cell ``key``, or ``_MISSING`` (absent or unreadable: recomputed)."""
    p = _cell_path(cells_dir, key)
    try:
        with open(p, "rb") as fh:
            rec = pickle.load(fh)
    except FileNotFoundError:
        return _MISSING
    except Exception:                     # a damaged file (not ours, or a full disk): recompute it
        return _MISSING
    if not isinstance(rec, dict) or rec.get("format") != CELL_FORMAT or rec.get("key") != key:
        return _MISSING
    return rec["result"]


# ------------------------------------------------------------------------------------------------
# the sweep
# ------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class SweepResult:
    """Results of :func:`run_sweep`, in grid order.

    ``results[i]`` is the result of ``grid[i]``; ``keys[i]`` its cell key; ``computed`` the grid
    indices computed by this call and ``loaded`` those read back from ``cells_dir``;
    ``executor`` describes where the cells ran; ``cell_seconds[i]`` the compute time of a cell
    computed by this call (None for loaded cells)."""

    grid: List[Dict[str, Any]]
    results: List[Any]
    keys: List[str]
    computed: List[int]
    loaded: List[int]
    executor: str
    seconds: float
    cell_seconds: List[Optional[float]]

    def items(self) -> Iterator[Tuple[Dict[str, Any], Any]]:
        """(params, result) pairs in grid order."""
        return iter(zip(self.grid, self.results))

    def __len__(self) -> int:
        return len(self.results)

    def __repr__(self) -> str:
        return (f"SweepResult(cells={len(self.results)}, computed={len(self.computed)}, loaded={len(self.loaded)}, "
                f"executor={self.executor!r}, seconds={self.seconds:.2f})")


def validate_executor(workers: Any = None, scheduler: Any = None, threads: Any = 1) -> None:
    """Raise ``ValueError``/``TypeError`` for bad executor options, and ``ImportError`` when they
    need Dask and it is not installed (before any work starts)."""
    if workers is not None:
        if isinstance(workers, (bool, np.bool_)) or not isinstance(workers, (int, np.integer)):
            raise TypeError(f"workers must be a positive integer; got {workers!r}")
        if int(workers) < 1:
            raise ValueError(f"workers must be at least 1; got {workers}")
    if scheduler is not None:
        if not isinstance(scheduler, str) or not scheduler.strip():
            raise TypeError(f"scheduler must be a scheduler address such as 'tcp://host:8786'; got {scheduler!r}")
        if workers is not None:
            raise ValueError("give either workers= (start a local cluster) or scheduler= (use an existing one), "
                             "not both")
    if isinstance(threads, (bool, np.bool_)) or not isinstance(threads, (int, np.integer)):
        raise TypeError(f"threads must be a positive integer; got {threads!r}")
    if int(threads) < 1:
        raise ValueError(f"threads must be at least 1; got {threads}")
    if workers is not None or scheduler is not None:
        _import_dask()


def run_sweep(fn: Callable[..., Any], grid: Sequence[Mapping[str, Any]], *, cells_dir: Optional[str] = None,
              workers: Optional[int] = None, scheduler: Optional[str] = None, threads: int = 1,
              progress: bool = True, desc: str = "sweep", retries: int = 2, resume: bool = True,
              version: str = "", connect_timeout: float = CONNECT_TIMEOUT, check_code: bool = True,
              priority: Optional[Sequence[float]] = None) -> SweepResult:
    """Compute ``fn(**params)`` for every ``params`` in ``grid``; results in grid order.

    Parameters
    ----------
    fn : callable
        A top-level (importable, picklable) function of plain-data keyword parameters.
    grid : sequence of dict
        One parameter dict per cell (see :func:`canonical` for what a parameter may be).
    cells_dir : str, optional
        Folder for one file per finished cell (written atomically as each cell finishes);
        with ``resume`` a rerun loads the finished cells and computes only the missing ones.
    workers : int, optional
        Start a Dask ``LocalCluster`` with this many single-threaded worker processes (needs
        ``pip install 'metastep[dask]'``).
    scheduler : str, optional
        Address of an existing Dask scheduler (``tcp://host:8786``); exclusive with ``workers``.
    threads : int
        In-process only (neither ``workers`` nor ``scheduler``): cells run at a time on Python
        threads (for cells that release the GIL).
    progress : bool
        tqdm progress bar over the cells.
    desc : str
        Label of the progress bar.
    retries : int
        Dask only: times a cell that raised is re-run before the sweep fails.  (Cells lost with
        a dead worker are always re-run, up to Dask's ``distributed.scheduler.allowed-failures``.)
    resume : bool
        Reuse finished cells found in ``cells_dir`` (default); False recomputes and overwrites.
    version : str
        Extra text mixed into the cell keys (change it to invalidate stored cells).
    connect_timeout : float
        Seconds to wait for ``scheduler``.
    priority : sequence of float, optional
        One number per cell: cells with larger numbers start first (e.g. an estimate of their
        cost, so that the longest cells do not start last and leave workers idle at the end).
        Only the order of computation changes, never the results or their order.
    check_code : bool
        With ``scheduler``: refuse to run when a connected worker has other metastep code
        (:func:`code_fingerprint`: its Python files or compiled module differ), since its cells
        could come out with other bits.

    Returns
    -------
    SweepResult

    Raises
    ------
    SweepError
        A cell failed after its retries, or the scheduler could not be reached.
    """
    validate_executor(workers, scheduler, threads)
    if isinstance(retries, bool) or not isinstance(retries, (int, np.integer)) or retries < 0:
        raise ValueError(f"retries must be a non-negative integer; got {retries!r}")
    fn_name = _fn_name(fn)
    for i, p in enumerate(grid):
        if not isinstance(p, Mapping):
            raise TypeError(f"grid[{i}] must be a dict of parameters; got {type(p).__name__}")
    cells = [dict(p) for p in grid]
    keys = [cell_key(fn, p, version) for p in cells]
    if len(set(keys)) != len(keys):
        dup = next(i for i, k in enumerate(keys) if keys.index(k) != i)
        raise ValueError(f"grid has duplicate cells: grid[{dup}] equals grid[{keys.index(keys[dup])}]")
    start = time.perf_counter()
    n = len(cells)
    results: List[Any] = [_MISSING] * n
    cell_seconds: List[Optional[float]] = [None] * n
    loaded: List[int] = []
    if cells_dir is not None:
        os.makedirs(cells_dir, exist_ok=True)
        if resume:
            for i, k in enumerate(keys):
                r = _read_cell(cells_dir, k)
                if r is not _MISSING:
                    results[i] = r
                    loaded.append(i)
    pending = [i for i in range(n) if results[i] is _MISSING]
    if priority is not None:
        if len(priority) != n:
            raise ValueError(f"priority must have one entry per cell ({n}); got {len(priority)}")
        prio = [float(p) for p in priority]
        if not all(math.isfinite(p) for p in prio):
            raise ValueError("priority must hold finite numbers")
        pending.sort(key=lambda i: (-prio[i], i))      # stable: grid order among equals

    if scheduler is not None:
        executor = f"dask scheduler {scheduler}"
    elif workers is not None:
        executor = f"dask LocalCluster, {int(workers)} worker process{'es' if workers != 1 else ''}"
    else:
        executor = "in-process" + (f", {int(threads)} threads" if threads > 1 else "")

    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=n, initial=len(loaded), desc=desc, unit="cell", dynamic_ncols=True)
        bar.set_postfix_str(executor, refresh=False)

    def finish(i: int, out: Any, sec: float) -> None:
        results[i] = out
        cell_seconds[i] = sec
        if cells_dir is not None:
            _write_cell(cells_dir, keys[i], fn_name, cells[i], out, sec)
        if bar is not None:
            bar.update(1)

    computed: List[int] = []
    try:
        if pending:
            if workers is None and scheduler is None:
                _run_local(fn, cells, pending, int(threads), finish, computed)
            else:
                _run_dask(fn, cells, keys, pending, workers, scheduler, int(retries), float(connect_timeout),
                          bool(check_code), finish, computed)
    finally:
        if bar is not None:
            bar.close()
    return SweepResult(grid=cells, results=results, keys=keys, computed=sorted(computed), loaded=loaded,
                       executor=executor, seconds=time.perf_counter() - start, cell_seconds=cell_seconds)


def _describe(params: Mapping[str, Any], limit: int = 200) -> str:
    parts = []
    for k, v in params.items():
        if isinstance(v, np.ndarray):
            parts.append(f"{k}=<array {v.dtype} {v.shape}>")
        else:
            r = repr(v)
            parts.append(f"{k}={r if len(r) <= 40 else r[:37] + '...'}")
    s = ", ".join(parts)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _run_local(fn: Callable[..., Any], cells: List[Dict[str, Any]], pending: List[int], threads: int,
               finish: Callable[[int, Any, float], None], computed: List[int]) -> None:
    global _CELL_THREADS
    from .tuning import blas_threads
    old = _CELL_THREADS
    if threads > 1:
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - not Linux
            cores = os.cpu_count() or 1
        _CELL_THREADS = max(1, cores // threads)
    try:
        with blas_threads(1):
            if threads == 1:
                for i in pending:
                    try:
                        out, sec = _timed(fn, cells[i])
                    except Exception as exc:
                        raise SweepError(f"cell {i} ({_describe(cells[i])}) failed: {exc!r}") from exc
                    finish(i, out, sec)
                    computed.append(i)
            else:
                from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
                with ThreadPoolExecutor(threads) as ex:
                    futs = {ex.submit(_timed, fn, cells[i]): i for i in pending}
                    try:
                        while futs:
                            done, _ = wait(list(futs), return_when=FIRST_COMPLETED)
                            for f in done:
                                i = futs.pop(f)
                                try:
                                    out, sec = f.result()
                                except Exception as exc:
                                    raise SweepError(f"cell {i} ({_describe(cells[i])}) failed: {exc!r}") from exc
                                finish(i, out, sec)
                                computed.append(i)
                    finally:
                        for f in futs:
                            f.cancel()
    finally:
        _CELL_THREADS = old


def _import_dask() -> Any:
    try:
        import distributed
    except ImportError as exc:
        raise ImportError("workers= / scheduler= (--workers / --scheduler) need Dask's distributed scheduler: "
                          "pip install 'metastep[dask]'") from exc
    return distributed


def _connect(scheduler: Optional[str], workers: Optional[int], timeout: float) -> Tuple[Any, Any]:
    """(client, cluster or None)."""
    distributed = _import_dask()
    import logging
    if scheduler is not None:
        address = scheduler.strip()
        if "://" not in address:
            address = "tcp://" + address
        try:
            client = distributed.Client(address, timeout=timeout, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise SweepError(f"cannot reach the Dask scheduler at {scheduler!r} within {timeout:g} s ({exc}); "
                             "start one with `dask scheduler` and workers with `dask worker ADDRESS`, or use "
                             "--workers N for a local cluster") from exc
        except (ValueError, TypeError) as exc:
            raise SweepError(f"invalid Dask scheduler address {scheduler!r}: {exc}") from exc
        return client, None
    try:
        assert workers is not None  # one of scheduler / workers is given (checked by the caller)
        cluster = distributed.LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True,
                                           dashboard_address=None, silence_logs=logging.ERROR)
    except Exception as exc:
        raise SweepError(f"could not start a local Dask cluster of {workers} worker processes: {exc!r} (worker "
                         "processes are spawned: a script that starts a sweep needs an "
                         "`if __name__ == '__main__':` guard)") from exc
    try:
        client = distributed.Client(cluster, set_as_default=False)
    except BaseException:
        cluster.close()
        raise
    return client, cluster


def _check_worker_code(client: Any, scheduler: Optional[str]) -> None:
    """Refuse workers whose installed metastep differs from this process's (other code, other
    bits); workers that join later are not checked."""
    try:
        seen = client.run(code_fingerprint)
    except Exception as exc:
        raise SweepError(f"could not run metastep on the workers of {scheduler!r} (is metastep installed there, "
                         f"in the environment the workers run in?): {exc!r}") from exc
    mine = code_fingerprint()
    other = sorted(addr for addr, fp in seen.items() if fp != mine)
    if other:
        raise SweepError(f"{len(other)} of {len(seen)} workers run other metastep code than this process "
                         f"(code fingerprint {mine}): {', '.join(other[:4])}{' ...' if len(other) > 4 else ''}; "
                         "install the same metastep build everywhere, or pass check_code=False to accept it")


def _run_dask(fn: Callable[..., Any], cells: List[Dict[str, Any]], keys: List[str], pending: List[int],
              workers: Optional[int], scheduler: Optional[str], retries: int, timeout: float, check_code: bool,
              finish: Callable[[int, Any, float], None], computed: List[int]) -> None:
    client, cluster = _connect(scheduler, workers, timeout)
    distributed = sys.modules["distributed"]
    try:
        if check_code and scheduler is not None:
            _check_worker_code(client, scheduler)
        token = uuid.uuid4().hex[:8]
        futs = {}
        for rank, i in enumerate(pending):      # earlier in `pending` (priority, then grid order) runs first
            f = client.submit(_run_cell_on_worker, fn, cells[i], key=f"metastep-cell-{keys[i]}-{token}",
                              retries=retries, pure=False, priority=len(pending) - rank)
            futs[f] = i
        try:
            for f in distributed.as_completed(list(futs), loop=client.loop):
                i = futs.pop(f)
                try:
                    out, sec = f.result()
                except distributed.KilledWorker as exc:
                    raise SweepError(f"cell {i} ({_describe(cells[i])}) was running on workers that died "
                                     f"repeatedly; giving up ({exc})") from exc
                except Exception as exc:
                    raise SweepError(f"cell {i} ({_describe(cells[i])}) failed after {retries} retries: "
                                     f"{exc!r}") from exc
                f.release()
                finish(i, out, sec)
                computed.append(i)
        finally:
            if futs:
                client.cancel(list(futs))
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------

def _positive(text: str) -> int:
    import argparse
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def add_cli_arguments(parser: Any) -> None:
    """Add ``--workers N`` and ``--scheduler ADDRESS`` (mutually exclusive) to an argparse parser."""
    g = parser.add_mutually_exclusive_group()
    g.add_argument("--workers", type=_positive, default=None, metavar="N",
                   help="run the cells on a local Dask cluster of N worker processes (pip install 'metastep[dask]')")
    g.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run the cells on an existing Dask cluster, e.g. tcp://10.0.0.5:8786")


def cli_options(args: Any) -> Dict[str, Any]:
    """``{"workers": N}`` / ``{"scheduler": ADDRESS}`` from parsed arguments ({} when neither)."""
    out: Dict[str, Any] = {}
    if getattr(args, "workers", None) is not None:
        out["workers"] = args.workers
    if getattr(args, "scheduler", None) is not None:
        out["scheduler"] = args.scheduler
    return out
