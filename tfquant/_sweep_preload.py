"""Imported once by the fork server that starts the sweep workers (`fanout._on_processes`).

The fork server is a fresh interpreter that imports TensorFlow, the interpreter and the sweep's
functions here and never runs them; each sweep worker is a fork of it, ready in milliseconds
instead of importing TensorFlow itself (about 4 CPU-seconds per worker, per sweep). TensorFlow's
import-time notices stay out of the user's terminal.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
_stderr, _devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
os.dup2(_devnull, 2)
try:
    from tfquant import diagnose, ladder  # noqa: F401  (the sweep functions' modules, TensorFlow with them)
finally:
    os.dup2(_stderr, 2)
    os.close(_stderr)
    os.close(_devnull)
