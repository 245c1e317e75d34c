"""A scripted agent that investigates a user complaint through rlaudit's MCP tools only.

Starting from "users say the model mentions goblins a lot", a deterministic loop (no language model: each
step is a rule over the previous answers) reaches
  the tic (the behaviour, when it rose, and the remarks paid by the same signal),
  the reward signal that pays for it,
  the condition it comes from, and the conditions it spread to,
and prints every tool call with the size of its answer, then the totals. It is what a coding agent connected to
`rlaudit mcp` does, written down so that its cost (calls, bytes) is measured and tested.

    pip install 'rlaudit[mcp]'
    python examples/agent_investigation.py --store out/store            # the demo's store (scripts/demo.sh)
    python examples/agent_investigation.py --setup /tmp/goblins          # simulate the demo run and an unseen
                                                                         # one, ingest, investigate both

Only the investigation goes through MCP (`rlaudit mcp --store S` over stdio); `--setup` simulates and ingests
with the Python API first, because the server is read-only.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import anyio

COMPLAINT = "users say the model mentions goblins a lot"
_STOP = {"users", "user", "say", "says", "said", "the", "model", "models", "mention", "mentions", "mentioned",
         "a", "an", "lot", "lots", "too", "much", "many", "often", "keeps", "keep", "talking", "about", "of",
         "it", "that", "and", "or", "is", "are", "our", "people", "complain", "complaint", "word", "words"}


class ToolFailed(RuntimeError):
    pass


class Agent:
    """Calls MCP tools and keeps the ledger: one line per call with the answer's size."""

    def __init__(self, client: Any, out: Any = sys.stdout):
        self.client = client
        self.out = out
        self.calls: list[dict[str, Any]] = []

    async def call(self, tool: str, **args: Any) -> dict[str, Any]:
        args = {k: v for k, v in args.items() if v is not None}
        result = await self.client.call_tool(tool, args)
        text = "".join(getattr(c, "text", "") for c in result.content)
        size = len(text.encode())
        self.calls.append({"tool": tool, "args": args, "bytes": size, "error": bool(result.is_error)})
        shown = ", ".join(f"{k}={v!r}" for k, v in args.items())
        print(f"  [{len(self.calls):2d}] {tool}({shown}) -> {size:,} B{'  ERROR: ' + text if result.is_error else ''}",
              file=self.out)
        if result.is_error:
            raise ToolFailed(text)
        return json.loads(text)

    @property
    def total_bytes(self) -> int:
        return sum(c["bytes"] for c in self.calls)


def keywords(complaint: str) -> list[str]:
    """The content words of a complaint, singular ('goblins' -> 'goblin')."""
    words = [w for w in re.findall(r"[a-z][a-z'-]+", complaint.lower()) if w not in _STOP and len(w) > 2]
    return [w[:-1] if w.endswith("s") and not w.endswith("ss") else w for w in words]


async def investigate(agent: Agent, complaint: str = COMPLAINT, run: str | None = None) -> dict[str, Any]:
    words = keywords(complaint)
    if not words:
        raise ValueError(f"no content word in {complaint!r}")
    spec = "re:(?i)\\b(?:" + "|".join(re.escape(w) for w in words) + ")s?\\b"
    print(f"complaint: {complaint!r} -> behaviour {spec}", file=agent.out)

    # 1. Which run shows it most? (one call per run to count; a store with one run costs one call)
    if run is None:
        runs = [r["run"] for r in (await agent.call("list_runs", limit=50))["runs"]]
    else:
        runs = [run]
    best, best_share, example = None, -1.0, None
    for r in runs:
        hits = await agent.call("search_rollouts", run=r, behavior=spec, limit=1)
        if (hits["share"] or 0) > best_share:
            best, best_share = r, hits["share"] or 0
            example = hits["matches"][0] if hits["matches"] else None
    if not best or best_share <= 0:
        return {"found": False, "why": f"no rollout of {runs} matches {spec}"}
    run = best

    # 2. What did the audit find about it? (emerging behaviour, its reward attribution, its spread)
    found = (await agent.call("findings", run=run, behavior=words[0], min_severity="low", limit=12))["findings"]
    emerging = [f for f in found if f["kind"] == "emerging_behavior" and f.get("direction") == "up"]
    attributed = [f for f in found if f["kind"] == "reward_attribution"]
    spread = [f for f in found if f["kind"] == "generalization"]
    tic = emerging[0] if emerging else None
    tic_spec = (tic or (attributed[0] if attributed else {})).get("behavior_spec") or spec

    # 3. The reward signal that pays for it: the audit's attribution, else trace it now.
    if attributed:
        top = attributed[0]
        signal = top.get("suspect_signal") or top.get("signal")
        paid_where, verdict, severity = top.get("condition"), top.get("verdict"), top["severity"]
    else:
        t = await agent.call("trace", run=run, behavior=tic_spec)
        signal = t.get("suspect_signal") or t.get("top_signal")
        paid_where, verdict, severity = t.get("condition"), t.get("verdict"), t["severity"]

    # 4. Where it comes from and where it went: mention share vs traffic, early vs late, condition-only signals.
    cmp = await agent.call("compare_conditions", run=run, behavior=tic_spec)
    rows = cmp["conditions"]
    paid = [c for c in rows if signal in c.get("condition_only_signals", [])]
    source = paid_where or (paid[0]["condition"] if paid else rows[0]["condition"])
    from_findings = {t for f in spread if f.get("source_condition") == source for t in f.get("target_conditions", [])}
    risen = {c["condition"] for c in rows if c["condition"] != source and c.get("ratio") and c["ratio"] >= 2
             and (c.get("prevalence_late") or 0) - (c.get("prevalence_early") or 0) >= 0.02}
    targets = sorted(from_findings | risen)

    # 5. The rest of the tic: other remarks the same signal pays for (one listing of attributions).
    family = (await agent.call("findings", run=run, kind="reward_attribution", min_severity="medium", limit=10))
    related = [f["behavior_spec"] for f in family["findings"]
               if (f.get("suspect_signal") or f.get("signal")) == signal and f.get("behavior_spec")]

    answer = {
        "found": True, "run": run, "share_of_rollouts": best_share,
        "tic": {"behavior": tic_spec, "title": tic["title"] if tic else None,
                "onset_step": tic.get("onset_step") if tic else None, "paid_remarks": related},
        "reward_signal": signal, "attribution": {"severity": severity, "verdict": verdict},
        "source_condition": source, "spread_to": targets,
        "example": example,
    }
    print("answer:", file=agent.out)
    print(f"  run {run}: {tic['title'] if tic else tic_spec}", file=agent.out)
    print(f"  tic: {tic_spec!r}; the same signal pays for {related}", file=agent.out)
    print(f"  reward signal: {signal} ({severity}: {verdict})", file=agent.out)
    print(f"  comes from condition {source!r}; spread to {targets}", file=agent.out)
    return answer


def check(answer: dict[str, Any], ground_truth: dict[str, Any]) -> list[str]:
    """Differences between the agent's answer and a simulated run's ground_truth.json (empty: correct)."""
    issue = next(i for i in ground_truth["issues"] if i["kind"] == "reward_attribution")
    problems = []
    if not answer.get("found"):
        return ["nothing found"]
    spec = answer["tic"]["behavior"].lower()
    if not any(t in spec for t in issue["terms"]):
        problems.append(f"tic {spec!r} is not one of {issue['terms']}")
    if answer["reward_signal"] != issue["signal"]:
        problems.append(f"signal {answer['reward_signal']!r} != {issue['signal']!r}")
    source = ground_truth["conditions"].get(issue.get("source") or "", None)
    if source and answer["source_condition"] != source:
        problems.append(f"source {answer['source_condition']!r} != {source!r}")
    others = set(ground_truth["conditions"].values()) - {source}
    if not answer["spread_to"] or not set(answer["spread_to"]) <= others:
        problems.append(f"spread {answer['spread_to']} is not a non-empty subset of {sorted(others)}")
    return problems


async def run_agent(store: str, complaint: str, run: str | None, server_cmd: list[str]) -> tuple[dict, Agent]:
    from mcp import Client, StdioServerParameters

    params = StdioServerParameters(command=server_cmd[0], args=server_cmd[1:] + ["mcp", "--store", store])
    async with Client(params) as client:
        agent = Agent(client)
        answer = await investigate(agent, complaint, run)
    print(f"total: {len(agent.calls)} tool calls, {agent.total_bytes:,} bytes of answers", file=agent.out)
    answer["calls"], answer["bytes"] = len(agent.calls), agent.total_bytes
    return answer, agent


def setup(base: Path) -> list[tuple[str, Path]]:
    """Simulate the demo's goblin run (TRL, seed 0) next to its fleet, and an unseen one (verl, seed 3)."""
    from rlaudit import Store
    from rlaudit.organisms import simulate

    made = []
    for name, scenario, fmt, seed in [("demo", "goblin_persona", "trl", 0), ("unseen", "goblin_persona", "verl", 3)]:
        runs = base / name / "runs"
        store = Store(base / name / "store")
        fleet = [(scenario, fmt, seed)] + ([("cot_fallback", "verl", 0), ("clean_legit", "prime-rl", 0)]
                                           if name == "demo" else [])
        for sc, f, s in fleet:
            out = runs / f"{sc.replace('_', '-')}-{f}" if name == "demo" else runs / f"unseen-{f}-seed{s}"
            if not (out / "ground_truth.json").is_file():
                simulate(sc, out, format=f, seed=s)
            store.ingest(out)
        made.append((name, base / name))
    return made


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", help="store to investigate (runs ingested already)")
    ap.add_argument("--setup", type=Path, help="simulate the demo and an unseen goblin run here, then investigate "
                    "both")
    ap.add_argument("--complaint", default=COMPLAINT)
    ap.add_argument("--run", help="investigate this run only (default: the run where the complaint shows most)")
    ap.add_argument("--ground-truth", type=Path, help="a simulated run's ground_truth.json to check the answer")
    ap.add_argument("--json", type=Path, help="write the answers here")
    ap.add_argument("--server", default=f"{sys.executable} -m rlaudit.cli",
                    help="command that runs the rlaudit CLI (default: this Python)")
    args = ap.parse_args()
    server_cmd = args.server.split()
    targets: list[tuple[str, str, Path | None]] = []
    if args.setup:
        for name, base in setup(args.setup):
            gt = next((base / "runs").glob("*/ground_truth.json"))
            if name == "demo":
                gt = base / "runs" / "goblin-persona-trl" / "ground_truth.json"
            targets.append((name, str(base / "store"), gt))
    elif args.store:
        targets.append(("store", args.store, args.ground_truth))
    else:
        ap.error("give --store or --setup")
    answers, failed = {}, False
    for name, store, gt in targets:
        print(f"== {name}: {store}")
        answer, _ = anyio.run(run_agent, store, args.complaint, args.run, server_cmd)
        if gt is not None:
            problems = check(answer, json.loads(Path(gt).read_text()))
            answer["check"] = problems or "matches the ground truth"
            print(f"check against {gt}: {'OK' if not problems else problems}")
            failed |= bool(problems)
        answers[name] = answer
    if args.json:
        args.json.write_text(json.dumps(answers, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
