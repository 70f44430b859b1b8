"""Worker processes of a parent that farms out runs (`multiprocessing`'s spawn context).

`start` is a pool's initializer. It imports nothing heavy at module level, so that it runs before
the task's module (which imports TensorFlow) is unpickled.
"""

import multiprocessing
import os
import threading
import time

POLL_SECONDS = 0.5


def start() -> None:
    """Makes the worker exit when its parent dies (a worker left running would go on writing its
    run while a restarted parent resumes the same run), then starts TensorFlow quietly: its
    start-up chatter and Python warnings (retracing, as runs follow each other in one worker)
    stay out of the parent's console unless TFMETA_VERBOSE is set."""
    _exit_with(multiprocessing.parent_process().pid)
    from tfmeta import quiet
    quiet.start()
    if not quiet.verbose():
        import tensorflow as tf
        tf.get_logger().setLevel("ERROR")


def _exit_with(parent: int) -> None:
    """A daemon thread that ends the process once it has been re-parented. Not Linux's
    PR_SET_PDEATHSIG: that fires when the parent *thread* that forked the worker ends, and a
    pool's replacement workers are forked by its handler thread, which ends at the pool's close;
    killed there, a worker waiting for a task leaves the task queue's lock held and the pool's
    terminate waits on it forever."""
    def watch():
        while os.getppid() == parent:
            time.sleep(POLL_SECONDS)
        os._exit(1)

    if os.getppid() != parent:  # it died before the watch began
        os._exit(1)
    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
