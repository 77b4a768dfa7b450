"""Evaluation: HR@K / NDCG@K of ours vs baselines on the same splits, ablations, the report.

``protocol`` (targets, rankings, metrics) · ``popularity`` · ``sasrec`` · ``baselines`` (each
baseline as rankings) · ``stage`` (``run_evaluate``) · ``report`` (``report/``) · ``ablations``
(named config overrides run in sibling run directories).
"""
