"""Human rankings: `raylhf label` serves a run's pending batch to labelers in a browser.

`store` keeps the batch and the append-only labels log and derives everything else from them (queues,
progress, comparisons); `server` is the labeling web server; `stats` the labelers' statistics and agreement.
"""
