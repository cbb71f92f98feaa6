"""Trial isolation: each call in a fresh process that ends with it.

Keras 3 on TensorFlow keeps every fit's traced training graph alive after the model is gone
(measured: about 35 MiB per trial for a small U-Net; ``clear_session`` and ``gc`` do not free
it), so a long search in one process grows until it crashes. Each execution of a trial therefore
runs in a process of its own: memory, GPU memory included, returns to the system after every
trial, and a trial killed by the system for memory is recorded as failed.

The standard library does the work: a one-worker ``ProcessPoolExecutor`` per call, on a fork
server that has TensorFlow imported already (``preload``), so a trial process starts in a
fraction of a second instead of the seconds a fresh import takes. What is added on top is what
the executor does not know: Keras Tuner's two kinds of failure, and that a trial process ends
when its search is killed.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import threading
import time
import traceback
from pathlib import Path

import keras_tuner

# The module the fork server imports once, before it forks any trial process.
PRELOAD = "shipseg.search.tuning"
_context = None


def process_context() -> multiprocessing.context.BaseContext:
    """A fork server with ``PRELOAD`` imported (``spawn`` where there is no fork).

    The fork server never runs a TensorFlow op, so forking it is safe. It ignores the caller's
    ``sys.path`` while it starts, hence ``PYTHONPATH`` for that moment.
    """
    global _context
    if _context is not None:
        return _context
    if "forkserver" not in multiprocessing.get_all_start_methods():
        _context = multiprocessing.get_context("spawn")
        return _context
    from multiprocessing import forkserver

    forkserver.set_forkserver_preload([PRELOAD])
    saved = os.environ.get("PYTHONPATH")
    root = str(Path(__file__).resolve().parent.parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [root, saved]))
    try:
        forkserver.ensure_running()
    finally:
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved
    _context = multiprocessing.get_context("forkserver")
    return _context


def run_in_fresh_process(function, *arguments, prepare=None, prepare_arguments=()):
    """Runs ``function(*arguments)`` in a new process and returns its result.

    With ``prepare``, runs ``function(prepare(*prepare_arguments), *arguments)`` instead: what
    the process needs before its call (the training stream, say) is made there, not pickled.

    Exceptions raised there are raised here (Keras Tuner's ``FailedTrialError`` included), with
    the trial process's traceback attached by ``concurrent.futures``.

    Args:
        function: A picklable function (defined at module level).
        *arguments: Its picklable arguments.
        prepare: Called first in the new process, or None: its failure would repeat in every
            trial, so it stops the search (``FatalError``) instead of failing one trial.
        prepare_arguments: Arguments of ``prepare``.

    Raises:
        keras_tuner.errors.FailedTrialError: When the process dies without an answer, for
            example killed by the system for using too much memory.
    """
    # The watcher starts with the process, before any call reaches it: a search killed
    # between trials must not leave a worker waiting for a call that never comes.
    pool = concurrent.futures.ProcessPoolExecutor(
        1, mp_context=process_context(), initializer=_exit_with, initargs=(os.getpid(),)
    )
    call = (function, arguments, prepare, prepare_arguments)
    try:
        result = pool.submit(_in_trial_process, *call).result()
    except concurrent.futures.process.BrokenProcessPool:
        _end(pool, grace=0)
        raise keras_tuner.errors.FailedTrialError(
            "the trial's process ended abruptly (killed by the system, often for using too "
            "much memory)"
        ) from None
    except BaseException:
        _end(pool, grace=0)  # Ctrl-C, or the trial's own error: nothing left to wait for.
        raise
    _end(pool, grace=60)
    return result


def _end(pool: concurrent.futures.ProcessPoolExecutor, grace: float) -> None:
    """Shuts the pool down; kills its worker if it has not ended within ``grace`` seconds.

    The executor alone would wait for ever for a worker that hangs on its way out, or that
    still trains after the search alone was interrupted.
    """
    workers = list(pool._processes.values())  # The executor's own worker processes.
    pool.shutdown(wait=False, cancel_futures=True)
    for worker in workers:
        worker.join(grace)
        if worker.is_alive():
            worker.kill()
            worker.join()


def _in_trial_process(function, arguments, prepare, prepare_arguments):
    """The trial process's side of ``run_in_fresh_process``."""
    import gc

    # What this process inherits from the fork server (TensorFlow, Keras: some 400,000 objects)
    # lives as long as it does. Frozen, the garbage collector no longer walks it: each full
    # collection would take about 0.2 s (several per model build) and copy every page it reads.
    gc.freeze()
    if prepare is not None:
        try:
            prepared = prepare(*prepare_arguments)
        except Exception as error:
            raise keras_tuner.errors.FatalError(
                f"a trial process could not get ready: {type(error).__name__}: {error}\n"
                + traceback.format_exc()
            ) from None
        gc.freeze()  # What the preparation built lives as long as this process, too.
        arguments = (prepared, *arguments)
    try:
        return function(*arguments)
    except Exception as error:
        _ensure_picklable(error)
        raise


def _ensure_picklable(error: Exception) -> None:
    """Raises a plain ``RuntimeError`` in place of an error the search could not unpickle.

    Otherwise the executor would report the pool as broken, which reads as a memory kill.
    """
    import pickle

    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        text = "".join(traceback.format_exception(error))
        raise RuntimeError(f"{type(error).__name__}: {error}\n{text}") from None


def _exit_with(search_pid: int) -> None:
    """Ends this trial process as soon as the search process ``search_pid`` is gone.

    A search killed with kill -9 cannot stop its trials; without this, the trial would keep
    running, writing into a project that a rerun may already be resuming.
    """

    def search_is_alive() -> bool:
        try:
            os.kill(search_pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        try:  # A killed process stays a zombie until its own parent reaps it.
            return Path(f"/proc/{search_pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
        except OSError:
            return True

    def watch() -> None:
        while search_is_alive():
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-search", daemon=True).start()
