"""Incremental refresh: a delta of new interactions and new items -> a new serving version.

Modules, one job each: ``config`` (the ``refresh`` section), ``delta`` (read and validate the
delta, map it onto the run's dense ids), ``embeddings`` (behaviour vectors for new items: supplied,
fold-in, or a text-to-behaviour map), ``codes`` (unique codes from the saved codebook),
``histories`` (the delta users' extended histories), ``user_files`` (``sequences/`` and
``splits/`` read and rewritten file by file, only where a delta user is), ``decode`` (re-rank the
chosen users, exactly once, shard by shard), ``version`` (the version directory and its manifest)
and ``stage`` (``run_refresh``, which ties them together).
"""
