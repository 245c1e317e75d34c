"""Summarise a py-spy raw (collapsed-stack) profile of benchmarks/audit.py stage by stage.

    py-spy record --subprocesses --format raw --rate 20 -o audit.raw -- python benchmarks/audit.py ...
    python benchmarks/profiles/collapse.py audit.raw > benchmarks/profiles/audit-before.txt

A sample belongs to the stage whose marker function is on its stack (cold and warm audits pooled); within a
stage, functions are ranked by inclusive samples (on the stack) and by own samples (leaf frame).
"""

import collections
import re
import sys

STAGES = [("ingest", "ingest (rlaudit/store.py"), ("emerging", "detect (rlaudit/detectors/emerging.py"),
          ("generalization", "detect (rlaudit/detectors/generalization.py"),
          ("attribution", "detect (rlaudit/detectors/attribution.py"),
          ("cot_grading", "detect (rlaudit/detectors/cot_grading.py"),
          ("reward_health", "detect (rlaudit/detectors/reward_health.py"),
          ("findings JSON", "write_json (rlaudit/audit.py"), ("report", "write_report (rlaudit/report"),
          ("summary", "summary (rlaudit/store.py"), ("floor + other (measure)", "measure (audit.py"),
          ("generation (child, not measured)", "generate (audit.py")]
FRAME = re.compile(r"^(.*) \((?:.*/)?(src/|site-packages/)?(.*?)(?::\d+)?\)$")


def short(frame: str) -> str:
    frame = re.sub(r"/work/[^ ]*/src/", "", frame)
    frame = re.sub(r"/[^ ]*/site-packages/", "", frame)
    return re.sub(r":\d+\)$", ")", frame)


def main(path: str, top: int = 15) -> None:
    inclusive: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    own: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    total: collections.Counter = collections.Counter()
    for line in open(path):
        stack, _, count = line.rstrip("\n").rpartition(" ")
        frames = [short(f) for f in stack.split(";")]
        joined = ";".join(frames)
        stage = next((name for name, marker in STAGES if marker in joined), "other")
        n = int(count)
        total[stage] += n
        for f in set(frames):
            inclusive[stage][f] += n
        own[stage][frames[-1]] += n
    all_samples = sum(total.values())
    print(f"# py-spy samples per stage (all threads; {all_samples} samples)\n")
    for stage, n in total.most_common():
        print(f"{stage:40s} {n:7d} {n / all_samples:6.1%}")
    for stage, n in total.most_common():
        print(f"\n===== {stage}: {n} samples")
        print("--- inclusive (on the stack)")
        for f, k in inclusive[stage].most_common(top):
            print(f"{k:7d} {k / n:6.1%}  {f}")
        print("--- own (leaf frame)")
        for f, k in own[stage].most_common(top):
            print(f"{k:7d} {k / n:6.1%}  {f}")


if __name__ == "__main__":
    main(sys.argv[1])
