"""Derived data: what several detectors need from every rollout, computed once per stored part and kept beside
the run (under `<store>/<run>/derived/`), so that a new step adds only its own part's share.

- `tokens`: each rollout's term sets (the words and 1-3-grams of its answer and reasoning), the vocabulary they
  are counted against, and their per-step counts; `tokhash` tokenises and hashes texts for them, `styles`
  computes the style features a regex per row made costly, `kernels` holds their compiled loops.
- `stepcounts`: the run's per-step term counts as dense arrays, cached per run and grown by new parts.
- `chunks`: a per-run cache kept as chunk files named by a manifest and grown by a chunk of the new parts
  (the dense counts, the focus terms' cell rows).
- `termcells`: the term sets reduced to cells (step, split, task, condition, prompt), what `emerging` and
  `generalization` sum over.
- `partstats`: per-part sufficient statistics of the detectors (`runstats` for the run's summary).
- `segments`: per-part files merged into a few larger ones, so a long run's view opens tens of files, not
  thousands.
"""
