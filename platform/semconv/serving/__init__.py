"""Online serving helpers (pure, no Ray): the precache store, the item catalog, the fallback,
a serving version and its id.

The Ray Serve application in ``serve_app/`` wraps these; everything here unit-tests without a
cluster.
"""
