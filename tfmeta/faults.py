"""Disk and permission faults as one line: what could not be written, why, and what to do.

A full disk, a read-only folder or a missing permission reaches tfmeta as an `OSError` from
Python's own writes, or as a TensorFlow `OpError` from its checkpoint and SavedModel writers, whose
message holds the path and the system's words for the cause. `describe` turns either into one
sentence for the command line's `error:` line; anything else is not a fault of the disk.
"""

import errno
import os
import re
import sys
from typing import Optional

# The system's words for each fault (as TensorFlow's messages spell them), and what to do.
FAULTS = {
    errno.ENOSPC: ("No space left on device",
                   "free space on that disk, then run the same command again (a training run "
                   "continues from its last checkpoint with --resume)"),
    errno.EDQUOT: ("Disk quota exceeded",
                   "free space within your quota, then run the same command again"),
    errno.EROFS: ("Read-only file system",
                  "the folder is on a read-only file system: write the run or export elsewhere "
                  "(copy a read-only run to evaluate or analyze it)"),
    errno.EACCES: ("Permission denied",
                   "you may not write there: fix the folder's permissions or write elsewhere"),
}


def describe(error: BaseException) -> Optional[str]:
    """One line for a disk or permission fault, naming the path; None for any other error."""
    if isinstance(error, OSError) and error.errno in FAULTS:
        words, remedy = FAULTS[error.errno]
        return f"cannot write {error.filename or 'a file'}: {words}; {remedy}"
    tf = sys.modules.get("tensorflow")
    if tf is None or not isinstance(error, tf.errors.OpError):
        return None
    # Without the op's own name ({{function_node ... device:CPU:0}}) and its [Op:...] suffix.
    message = re.sub(r"\{\{[^}]*\}\}|\[Op:[^]]*\]", "", error.message or "")
    for code, (words, remedy) in FAULTS.items():
        if words.lower() in message.lower() or os.strerror(code).lower() in message.lower():
            path = re.search(r"(/[^\s:;,'\"]+)", message)
            # A checkpoint is written as "ckpt-N_temp/part-...tempstate...": name the checkpoint.
            where = re.sub(r"_temp(/.*)?$", "", path.group(1)) if path else "a file"
            return f"cannot write {where}: {words}; {remedy}"
    return None
