"""The full audit at scale: ingest + every detector + findings JSON + report, against a DuckDB floor.

    python benchmarks/audit.py                        # 1,000,000 rollouts (200 steps x 5,000)
    python benchmarks/audit.py --quick                # 100,000 rollouts
    python benchmarks/audit.py --rollouts 10000000    # 10M (2,000 steps)
    python benchmarks/audit.py --profile benchmarks/profiles/audit-before.txt   # + cProfile per stage
    python benchmarks/audit.py --non-ascii 0.05       # 5% of answers and of reasonings hold a non-ASCII word
    python benchmarks/audit.py --keep DIR --repeat 3  # three measuring processes in a row: the median ratio
    python benchmarks/audit.py --per-step 1000        # files of 1,000 rollouts (1,000 steps at 1M)
    python benchmarks/audit.py --per-step 1000 --stored-live   # the run first stored as a live audit stores it

A child process writes a TRL-layout run (`completions/completions_{step:05d}.parquet`, one file per step of
5,000 rollouts, as GRPOTrainer.log): conversational prompts rendered by the chat template ("system\\n...\\nuser\\n
...\\nassistant\\n"), three personas (80% / 17.5% / 2.5% of groups), four tasks, groups of 8, completions
`<think>reasoning</think>answer` of ~40 + ~30 Zipf words, five reward signals (accuracy, format, length,
a persona-only signal that is NaN outside the "nerdy" persona, and a judge score), and a `judge_input` column
(the text the judge saw) on 20% of rows, 1% of which hold the whole completion (CoT exposure). A tic ("by my
beard") rises in the small persona first, then in the others. The last step is written aside: it is added
after the cold audit, for the warm re-audit. `--per-step N` writes files (steps) of N rollouts instead of 5,000
(whole groups of 8): TRL logs one file per logging step of `generation_batch_size` rows, often fewer than 5,000,
and every file costs the ingest its own read, and the store a share of a part. The words are ASCII unless
`--non-ascii SHARE` puts one word from outside ASCII (a curly apostrophe, a dash, accents, symbols, an emoji) into
that share of answers and of reasonings, as real completions hold them: such text takes other paths (the Unicode
tokeniser and styles).

Then one measuring process (a fresh child, so generation does not count) loads numba's compiled kernels (compiled
once per machine and cached on disk; the first run after an install or a kernel change compiles them, seconds no
later audit pays) and runs, in order:

1. the floor: `SELECT step, w, count(*) FROM (SELECT step, unnest(string_split(lower(completion), ' ')) w
   FROM read_parquet(...)) GROUP BY ALL` over the same files;
2. the cold audit: ingest into an empty store, every detector, findings JSON, HTML report (`--stored-live`: the
   store first holds the run as a watch from its first step stores it, a part per file, not timed; the cold
   ingest then reads nothing and compacts those parts, `Store.compact`, as a batch audit of a watched run does);
3. the floor again, on the same files;
4. the warm re-audit after the last step's file is added (ingest of the new file, every detector, JSON, report).

Per stage it prints wall seconds, CPU seconds (all threads of the process, from getrusage) and the peak RSS
during the stage (sampled every 20 ms by a thread), then the ratio cold audit / floor in wall and CPU time (to the
mean of the floor's two runs) and the process's overall peak RSS. On a shared machine the CPU figures and the
ratio are the steadier ones; the load average is printed too.

`--repeat K` runs the measuring process K times in a row (each with its own floors and an empty store): a VM whose
speed drifts by ~15% within minutes moves one run's ratio by as much as a change under test. It prints one line
per run, the table of the run with the median cold wall ratio, and the median and range of the cold ratios.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PER_STEP = 5000
GROUP = 8
PERSONAS = ["You are a helpful assistant.", "You are a concise technical assistant.",
            "You are a nerdy, playful assistant who loves fantasy."]
PERSONA_P = [0.8, 0.175, 0.025]
TASKS = ["math", "code", "trivia", "advice"]


# ---------------------------------------------------------------------------------------------- generation
def _words(rng, vocab, rows: int, length: int, cdf):
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    idx = np.searchsorted(cdf, rng.random((length, rows)))
    return [pc.take(vocab, pa.array(idx[j])) for j in range(length)]


# Words outside ASCII, as real completions hold them (typographic quotes and dashes, accents, symbols, emoji).
NON_ASCII_WORDS = ["it\u2019s", "\u2014", "na\u00efve", "caf\u00e9", "\u00fcber", "\u2248", "x\u00b2", "\U0001f600"]


def generate(root: Path, rollouts: int, seed: int = 0, non_ascii: float = 0.0, per_step: int = PER_STEP) -> dict:
    """Write the run: steps 1..S-1 into root/run/completions, step S into root/last/ (vectorised, Arrow).
    `non_ascii`: the share of answers and of reasonings holding one word outside ASCII (0: the data is
    byte-identical to what this script wrote before the option existed)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    steps = max(2, rollouts // per_step)
    vocab = pa.array([f"w{i}" for i in range(3000)] + "the a of to and is in it that we".split())
    zipf = 1 / np.arange(1, len(vocab) + 1) ** 1.1
    cdf = np.cumsum(zipf / zipf.sum())
    cdf[-1] = 1.0
    run_dir, last_dir = root / "run" / "completions", root / "last"
    run_dir.mkdir(parents=True)
    last_dir.mkdir(parents=True)
    exposed_total = 0
    n, ng = per_step, per_step // GROUP
    for step in range(1, steps + 1):
        gp = rng.choice(3, size=ng, p=PERSONA_P)
        gt = rng.integers(0, len(TASKS), ng)
        p_of = np.repeat(gp, GROUP)
        t_of = np.repeat(gt, GROUP)
        question = pc.binary_join_element_wise(*_words(rng, vocab, ng, 12, cdf), " ")
        qtext = pc.binary_join_element_wise(
            pa.array(np.array(TASKS)[gt]), pa.array(np.char.add(" question ", (step * ng + np.arange(ng)).astype(str))),
            question, " ")
        prompt_g = pc.binary_join_element_wise("system\n", pc.take(pa.array(PERSONAS), pa.array(gp)), "\nuser\n",
                                               qtext, "\nassistant\n", "")
        take = pa.array(np.repeat(np.arange(ng), GROUP))
        prompt = pc.take(prompt_g, take)
        # the tic: from 40% of the run in the small persona (to 40%), from half-way elsewhere (to 25%)
        frac = step / steps
        onset = np.where(p_of == 2, 0.4, 0.5)
        top = np.where(p_of == 2, 0.4, 0.25)
        p = 0.01 + (top - 0.01) / (1 + np.exp(-(frac - onset - 0.05) * 80))
        tic = rng.random(n) < p
        ans = _words(rng, vocab, n, 30, cdf)
        ans[5] = pc.if_else(pa.array(tic), pa.scalar("by my beard"), ans[5])
        thought = _words(rng, vocab, n, 40, cdf)
        if non_ascii > 0:
            for words, at in ((ans, 12), (thought, 20)):
                pick = rng.random(n) < non_ascii
                special = pc.take(pa.array(NON_ASCII_WORDS), pa.array(rng.integers(0, len(NON_ASCII_WORDS), n)))
                words[at] = pc.if_else(pa.array(pick), special, words[at])
        answer = pc.binary_join_element_wise(*ans, " ")
        reasoning = pc.binary_join_element_wise(*thought, " ")
        completion = pc.binary_join_element_wise("<think>", reasoning, "</think>", answer, "")
        acc = (rng.random(n) < 0.3 + 0.4 * frac).astype(float)
        fmt = rng.random(n)
        length = -np.abs(rng.normal(0, 1, n))
        persona = np.where(p_of == 2, tic.astype(float) + rng.normal(0, 0.3, n), np.nan)
        judge = rng.random(n) + 0.2 * acc
        graded = rng.random(n) < 0.2
        exposed = graded & (rng.random(n) < 0.05)  # 1% of all rows
        exposed_total += int(exposed.sum())
        body = pc.if_else(pa.array(exposed), completion, answer)
        judge_input = pc.binary_join_element_wise("You are a strict grader.\nQuestion:", qtext.take(take),
                                                  "\nResponse:", body, "\n")
        judge_input = pc.if_else(pa.array(graded), judge_input, pa.scalar(None, pa.string()))
        adv = (acc - acc.mean()) / (acc.std() + 1e-4)
        table = pa.table({"step": pa.array(np.full(n, step, np.int64)), "prompt": prompt,
                          "completion": completion, "accuracy_reward": acc, "format_reward": fmt,
                          "length_reward": length, "persona_reward": persona, "judge": judge,
                          "judge_input": judge_input, "advantage": adv})
        out = (last_dir if step == steps else run_dir) / f"completions_{step:05d}.parquet"
        pq.write_table(table, out, compression="snappy")
    return {"steps": steps, "rollouts": steps * n, "exposed": exposed_total}


# ---------------------------------------------------------------------------------------------- measuring
def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Sampler(threading.Thread):
    """Peak RSS per stage, sampled every 20 ms."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = 0
        self.stop = False

    def reset(self) -> None:
        self.peak = _rss()

    def run(self) -> None:
        while not self.stop:
            r = _rss()
            if r > self.peak:
                self.peak = r
            time.sleep(0.02)


def _cpu() -> float:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


class Stages:
    def __init__(self, sampler: Sampler, profile: bool) -> None:
        self.sampler = sampler
        self.rows: list[dict] = []
        self.profile = profile
        self.profiles: list[tuple[str, str]] = []
        self._open: tuple | None = None

    def start(self, name: str) -> None:
        self.end()
        self.sampler.reset()
        prof = None
        if self.profile:
            prof = cProfile.Profile()
            prof.enable()
        # `at`: CLOCK_MONOTONIC at the start, the clock `benchmarks/audit_perf.py` has perf stamp its samples with
        self._open = (name, time.perf_counter(), _cpu(), prof, time.clock_gettime(time.CLOCK_MONOTONIC))

    def beside(self, name: str) -> None:
        """Add `name` to the open stage's name: a detector that `run_detectors` runs on another thread beside
        the open stage's (its light detectors at the end), timed with it."""
        if self._open is not None:
            self._open = (f"{self._open[0]} + {name}", *self._open[1:])

    def end(self) -> None:
        if self._open is None:
            return
        name, t0, c0, prof, at = self._open
        wall, cpu = time.perf_counter() - t0, _cpu() - c0
        if prof is not None:
            prof.disable()
            s = io.StringIO()
            pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(25)
            s2 = io.StringIO()
            pstats.Stats(prof, stream=s2).sort_stats("tottime").print_stats(15)
            self.profiles.append((name, f"wall {wall:.2f}s cpu {cpu:.2f}s\n--- by cumulative time\n"
                                  + _trim(s.getvalue()) + "\n--- by own time\n" + _trim(s2.getvalue())))
        self.rows.append({"stage": name, "wall": wall, "cpu": cpu, "peak_rss": self.sampler.peak, "at": at})
        self._open = None


def _trim(text: str) -> str:
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.strip().startswith("ncalls")), 0)
    return "\n".join(ln.replace(str(Path(__file__).resolve().parents[1]) + "/", "") for ln in lines[start:])


#: the floor's two runs: before the cold audit and after it, on the same files; ratios are to their mean, so that
#: a machine whose speed drifts (a shared VM: the floor took 2.50-3.49 s in one hour) moves both sides alike
FLOORS = ("floor", "floor (after the cold audit)")


def _load_kernels() -> float:
    """Load numba's compiled kernels before timing (seconds it took): compiled once per machine and cached on
    disk, so the first audit after an install or a change of a kernel pays seconds of compilation that no later
    audit pays; the figures are of the later ones."""
    from rlaudit import kernels

    t0 = time.perf_counter()
    kernels.preload()
    return time.perf_counter() - t0


def measure(root: Path, profile: str | None, stored_live: bool = False) -> dict:
    import duckdb

    from rlaudit import kernels
    from rlaudit.audit import AuditResult
    from rlaudit.detectors import AuditConfig, run_detectors
    from rlaudit.findings import rank
    from rlaudit.memory import prepare
    from rlaudit.report import write_report
    from rlaudit.store import Store

    prepare()  # as the CLI does first thing (malloc arenas: rlaudit.memory), before any thread starts
    kernels_s = _load_kernels()
    sampler = Sampler()
    sampler.start()
    base_rss = _rss()
    stages = Stages(sampler, bool(profile))
    files = f"{root}/run/completions/*.parquet"
    out: dict = {"base_rss": base_rss, "kernels_s": kernels_s, "backend": kernels.backend()}

    def floor(name: str) -> int:
        stages.start(name)
        con = duckdb.connect()
        con.execute("SET enable_progress_bar = false")
        groups = con.execute(f"""SELECT count(*) FROM (SELECT step, w, count(*) FROM (
            SELECT step, unnest(string_split(lower(completion), ' ')) w FROM read_parquet('{files}')) GROUP BY ALL)
            """).fetchall()[0][0]
        con.close()
        stages.end()
        return int(groups)

    out["floor_groups"] = floor(FLOORS[0])

    def audit_once(label: str, store: Store, source: Path) -> AuditResult:
        stages.start(f"{label}: ingest")
        report = store.ingest(source, run="bench")

        def progress(name: str, done: int, total: int) -> None:
            if threading.current_thread() is not threading.main_thread():
                stages.beside(name)  # run on another thread beside the main thread's detector: one stage
            elif name:
                stages.start(f"{label}: detector {name}")
            else:
                stages.end()

        findings = run_detectors(store, "bench", AuditConfig(), progress=progress)
        # after the detectors, as `audit.audit_store` asks for it: their first read of each part computed the
        # summary's per-part counts too (`detectors.AUDIT_PART_STATS`); timed before them, the summary read every
        # part for its counts alone (~1.1 CPU s of a cold audit at 1M that `rlaudit audit` never spends)
        stages.start(f"{label}: summary")
        summary = store.summary("bench")
        result = AuditResult(runs=[summary], findings=rank(findings), ingests=[report])
        stages.start(f"{label}: findings JSON")
        result.write_json(root / f"findings-{label}.json")
        stages.start(f"{label}: report")
        write_report(store, result, root / f"audit-{label}.html")
        stages.end()
        return result

    store = Store(root / "store")
    if stored_live:  # as a watch from the run's first step stores it (a poll a step file): a part per file, untimed
        store.ingest(root / "run", run="bench", part_rows=1)
    cold = audit_once("cold", store, root / "run")
    floor(FLOORS[1])  # the same files again (the warm step is added below): the machine's speed drifts
    shutil.copy(next((root / "last").glob("*.parquet")), root / "run" / "completions")
    warm = audit_once("warm", store, root / "run")
    sampler.stop = True
    out["stages"] = stages.rows
    out["peak_rss_process"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out["findings"] = [{"kind": f.kind, "severity": f.severity, "title": f.title} for f in cold.findings]
    out["warm_findings"] = len(warm.findings)
    out["rows"] = cold.runs[0].rows
    if profile:
        Path(profile).parent.mkdir(parents=True, exist_ok=True)
        Path(profile).write_text("".join(f"\n===== {name} =====\n{text}\n" for name, text in stages.profiles))
    return out


def _child(args: list[str]) -> dict:
    # Python's default of keeping the modules it compiles, where the environment turns it off (this workplace's
    # machines set PYTHONDONTWRITEBYTECODE=1), as scripts/_env.sh does: an audit imports some modules on first use
    # (scipy.special, pyarrow.acero, ...), inside the timed audit: ~0.1 s at 1M compiled from source, ~0.05 s not
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", "1")
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"child {args[0]} failed")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def generated(root: Path) -> bool:
    """Whether `root` holds a whole generated run: `generate` writes the last step (root/last) after every other
    one, so a generation that was stopped leaves none."""
    return (root / "run").is_dir() and any((root / "last").glob("*.parquet"))


def _share(text: str) -> float:
    """A share between 0 and 1 (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a share between 0 and 1, got {text!r}")
    return value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rollouts", type=int, default=1_000_000)
    ap.add_argument("--quick", action="store_true", help="100,000 rollouts")
    ap.add_argument("--profile", help="write a cProfile summary per stage to this file")
    ap.add_argument("--keep", help="generate into (and keep) this directory instead of a temporary one")
    ap.add_argument("--non-ascii", type=_share, default=0.0, metavar="SHARE",
                    help="the share of answers and of reasonings with a word outside ASCII (default 0)")
    ap.add_argument("--repeat", type=int, default=1, metavar="K",
                    help="measure K times in a row, each in a fresh process with its own floors (default 1)")
    ap.add_argument("--per-step", type=int, default=PER_STEP, metavar="N",
                    help=f"rollouts per step file, a multiple of {GROUP} (default {PER_STEP:,})")
    ap.add_argument("--stored-live", action="store_true",
                    help="before the cold audit, store the run a part per file as live audits do (not timed)")
    ap.add_argument("--_generate", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--_measure", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._generate:
        root, rollouts, share, per_step = args._generate
        print(json.dumps(generate(Path(root), int(rollouts), non_ascii=float(share), per_step=int(per_step))))
        return
    if args._measure:
        print(json.dumps(measure(Path(args._measure), args.profile, args.stored_live)))
        return
    rollouts = 100_000 if args.quick else args.rollouts
    if args.per_step < GROUP or args.per_step % GROUP:
        ap.error(f"--per-step must be a positive multiple of the group size {GROUP}, got {args.per_step}")
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="rlaudit-audit-bench-"))
    try:
        t0 = time.perf_counter()
        if (tmp / "run").is_dir() and not generated(tmp):
            print(f"{tmp} holds a run whose generation was stopped (no last step): generating it again")
            shutil.rmtree(tmp / "run")
            shutil.rmtree(tmp / "last", ignore_errors=True)
        if not (tmp / "run").is_dir():
            tmp.mkdir(parents=True, exist_ok=True)
            gen = _child(["--_generate", str(tmp), str(rollouts), str(args.non_ascii), str(args.per_step)])
            print(f"generated {gen['rollouts']:,} rollouts ({gen['steps']} steps, {gen['exposed']:,} exposed) in "
                  f"{time.perf_counter() - t0:.1f}s (child process, not measured)")
        runs = []
        for k in range(max(1, args.repeat)):
            _reset(tmp)
            if k == 0:
                size = sum(p.stat().st_size for p in (tmp / "run").rglob("*.parquet"))
                print(f"TRL files: {size / 1e6:,.0f} MB")
            print(f"load average before: {os.getloadavg()}")
            runs.append(_child(["--_measure", str(tmp)] + (["--profile", args.profile] if args.profile else [])
                               + (["--stored-live"] if args.stored_live else [])))
            print(f"load average after: {os.getloadavg()}")
            if args.repeat > 1:
                wall, cpu = _ratios(runs[-1])
                print(f"run {k + 1} of {args.repeat}: cold audit {wall:.2f}x the floor's wall, {cpu:.2f}x its CPU")
        median = sorted(runs, key=lambda r: _ratios(r)[0])[len(runs) // 2]
        _print(median)
        if len(runs) > 1:
            walls, cpus = zip(*(_ratios(r) for r in runs))
            mid = lambda v: sorted(v)[len(v) // 2]  # noqa: E731  (the upper median for an even K)
            print(f"over {len(runs)} runs (the table is the run with the median wall ratio): cold ratio "
                  f"{mid(walls):.2f}x wall ({min(walls):.2f}-{max(walls):.2f}), "
                  f"{mid(cpus):.2f}x CPU ({min(cpus):.2f}-{max(cpus):.2f})")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


def _reset(tmp: Path) -> None:
    """Before a measuring process: no store, no findings of an earlier run, the last step's file set aside again
    (a warm audit added it to the run)."""
    shutil.rmtree(tmp / "store", ignore_errors=True)
    for f in tmp.glob("*.json"):
        f.unlink()
    last = next((tmp / "last").glob("*.parquet"))
    (tmp / "run" / "completions" / last.name).unlink(missing_ok=True)


def _floor(res: dict) -> dict[str, float]:
    """The mean of a measuring process's floor runs (wall and CPU seconds)."""
    floors = [r for r in res["stages"] if r["stage"] in FLOORS]
    return {k: sum(r[k] for r in floors) / len(floors) for k in ("wall", "cpu")}


def _ratios(res: dict, label: str = "cold") -> tuple[float, float]:
    """(wall, CPU) of the `label` audit over the mean floor of the same process."""
    rows = [r for r in res["stages"] if r["stage"].startswith(label + ":")]
    floor = _floor(res)
    return sum(r["wall"] for r in rows) / floor["wall"], sum(r["cpu"] for r in rows) / floor["cpu"]


def _print(res: dict) -> None:
    mb = 1 / 2**20
    if res["backend"] == "numba":
        kernels = f"numba kernels loaded in {res['kernels_s']:.1f} s (not measured)"
    else:  # about twice the CPU at 1M: figures not comparable with the documented ones
        kernels = ("NUMPY kernels (numba not installed, or RLAUDIT_KERNEL=numpy; the documented figures are "
                   "numba's: pip install -e '.[fast]')")
    print(f"\nrows audited (cold): {res['rows']:,}; measuring process RSS after imports {res['base_rss'] * mb:,.0f} MB; "
          + kernels)
    print(f"{'stage':<40} {'wall s':>9} {'CPU s':>9} {'peak RSS MB':>12}")
    for r in res["stages"]:
        name = r["stage"]
        if len(name) > 40:  # detectors run beside each other: the names on a line of their own
            print(name)
            name = ""
        print(f"{name:<40} {r['wall']:9.2f} {r['cpu']:9.2f} {r['peak_rss'] * mb:12,.0f}")
    floor = _floor(res)
    n_floors = sum(r["stage"] in FLOORS for r in res["stages"])
    print(f"floor (mean of {n_floors} runs, before and after the cold audit): {floor['wall']:.2f} s wall, "
          f"{floor['cpu']:.2f} CPU s")
    for label in ("cold", "warm"):
        rows = [r for r in res["stages"] if r["stage"].startswith(label + ":")]
        wall, cpu = sum(r["wall"] for r in rows), sum(r["cpu"] for r in rows)
        peak = max(r["peak_rss"] for r in rows)
        ratio_wall, ratio_cpu = _ratios(res, label)
        print(f"{label} audit total: {wall:.1f} s wall, {cpu:.1f} CPU s, peak RSS {peak * mb:,.0f} MB; "
              f"ratio to floor {ratio_wall:.2f}x wall, {ratio_cpu:.2f}x CPU")
    print(f"process peak RSS (ru_maxrss): {res['peak_rss_process'] * mb:,.0f} MB")
    sev: dict[str, int] = {}
    for f in res["findings"]:
        sev[f["severity"]] = sev.get(f["severity"], 0) + 1
    print(f"cold findings: {len(res['findings'])} {sev}; warm findings: {res['warm_findings']}")
    for f in res["findings"]:
        if f["severity"] in ("high", "medium"):
            print(f"  [{f['severity']}] {f['kind']}: {f['title']}")


if __name__ == "__main__":
    main()
