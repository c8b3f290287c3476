"""Evaluation: BEIR metrics and TREC runs (ir_metrics.py), few-shot alignment adaptation
(adaptation.py), alignment pictures (visualize.py), and the gin jobs that encode, index and
evaluate (jobs.py).

Submodules are imported explicitly (`from aligner_jax.eval import ir_metrics`); visualize pulls in
matplotlib and jobs pulls in the models, so neither loads with the package.
"""
