"""semconv: Semantic Convergence (two-stage alignment + behavioural semantic tokenization) on Ray."""

__version__ = "0.1.0"
