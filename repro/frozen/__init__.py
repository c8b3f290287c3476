"""Claims R2-R5: heads trained over a frozen encoder's cached token vectors (the regime of
LITE App. A.4).

The encoder's token vectors are cached once by the encode job; everything here trains and
evaluates only heads on them:
  cache.py          load the cache (corpus store, padded queries); encode a missing query split
  batches.py        (query, positive, BM25 negatives) batches; fixed candidate lists
  heads.py          `HeadConfig` -> a `DualEncoder` whose heads run on cached states; pair and
                    in-batch scores (ALIGNER head, ColBERT, MaxSim, dual encoder, LITE, KNRM)
  head_training.py  the jitted AdamW loop, dev selection
  head_eval.py      re-ranking a first stage, the token index with β^d / β^q pruning, metrics
  frozen_data.py    `FrozenData`: one collection's inputs, loaded lazily
  trained_heads.py  trained heads kept on disk, keyed by their settings
  experiments.py    claims R2-R5 as functions
  r2_r5_jobs.py     their gin jobs; r2_r5_figures.py their plots; r2_r5_tables.py their
                    markdown tables
Submodules are imported explicitly; the jobs and figures pull in gin and matplotlib.
"""
