"""Root cause: which reward signal, condition and data drove a behaviour.

- `trace`: the within-group statistics (paired preference, effect, GRPO selection pressure) and `trace()`;
- `detector`: the `attribution` detector, which traces the behaviours emerging-behaviour discovery found.
"""
