"""Reproductions of the papers' claims R1-R5 at CPU scale (docs/reproduction.md).

Research code on top of the library: nothing in `aligner_jax/` imports it, and `setup.py` does
not install it. The gin experiment files (`gin/experiments/repro_*.gin`) import its job
modules, which works from the repository root (the current directory is on `sys.path` for
`python -m aligner_jax.main` and for the tests).

  r1.py            claim R1: per-query nDCG@10 of every alignment strategy, fold reports,
                   tables (`docs/results/r1.{json,md}`)
  r1_figures.py    the R1 heat map and strategy picks
  r1_job.py        the gin job `repro_r1` over `R1Dataset`s
  papers.py        the papers' reported numbers, read from `docs/results/papers.json`
  frozen/          claims R2-R5: heads trained on a frozen encoder's cached token vectors
Submodules are imported explicitly; the job and figure modules pull in gin and matplotlib.
"""
