"""Worker processes of a parent that farms out runs (`multiprocessing`'s spawn context).

`start` is a pool's initializer. It imports nothing heavy at module level, so that it runs before
the task's module (which imports TensorFlow) is unpickled.
"""

import ctypes
import multiprocessing
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def start() -> None:
    """On Linux, asks to be killed with the parent (a worker left running would go on writing
    its run while a restarted parent resumes the same run), then starts TensorFlow quietly: its
    start-up chatter and Python warnings (retracing, as runs follow each other in one worker)
    stay out of the parent's console unless TFMETA_VERBOSE is set."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != multiprocessing.parent_process().pid:  # it died before the request
            os._exit(1)
    from tfmeta import quiet
    quiet.start()
    if not quiet.verbose():
        import tensorflow as tf
        tf.get_logger().setLevel("ERROR")
