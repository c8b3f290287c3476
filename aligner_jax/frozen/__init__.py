"""Heads trained over a frozen encoder's cached token vectors (the regime of LITE App. A.4).

The encoder's token vectors are cached once by the encode job; everything here trains and
evaluates only heads on them:
  cache.py        load the cache (corpus store, padded queries); encode a missing query split
  batches.py      (query, positive, BM25 negatives) batches; fixed candidate lists
  heads.py        `HeadConfig` -> a `DualEncoder` whose heads run on cached states; pair and
                  in-batch scores (ALIGNER head, ColBERT, MaxSim, dual encoder, LITE, KNRM)
  train.py        the jitted AdamW loop, dev selection
  evaluate.py     re-ranking a first stage, the token index with β^d / β^q pruning, metrics
  data.py         `FrozenData`: one collection's inputs, loaded lazily
  store.py        trained heads kept on disk, keyed by their settings
  experiments.py  claims R2-R5 as functions; jobs.py their gin jobs; figures.py their plots
Submodules are imported explicitly; jobs/figures pull in gin and matplotlib.
"""
