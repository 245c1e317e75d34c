"""The CoT-grading family: did a grader see the policy's chain-of-thought?

- `scan`: logged or captured grader inputs searched for the rollout's reasoning (word shingles, `shingles`);
- `screen`: a statistical screen from scores alone (identical answers, different reasoning, different scores);
- `detector`: the `cot_grading` detector that runs both and turns them into findings;
- `probe`: `rlaudit probe-grader`, counterfactual edits of the reasoning sent to a grader given as code;
- `capture`: wrappers that log what a reward function was given, for trainers that do not log it;
- `stats`: the interval estimates the four report.

This package imports nothing at load time, so `rlaudit.cot.capture` stays cheap inside a training process.
"""
