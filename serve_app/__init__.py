"""Ray Serve application for semconv: precached recommendations and cold-start tokenization.

Import path for Serve: ``serve_app.app:app_builder`` (args: ``run_dir``, optional ``precache``,
``fallback``, ``max_batch``). See ``serve_app/README.md``.
"""
