"""Evaluation: HR@K / NDCG@K of ours vs baselines on the same splits, ablations, the report.

``protocol`` (split rows, rankings, metrics; the rules themselves are :mod:`semconv.protocol`) ·
``sasrec`` · ``baselines`` (each baseline as rankings) · ``stage`` (``run_evaluate``) · ``report``
(``report/``) · ``ablations`` (named config overrides run in sibling run directories).
"""
