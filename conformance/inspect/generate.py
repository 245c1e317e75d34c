"""Write Inspect eval logs, `.eval` (zip) and `.json`, with inspect_ai's own eval loop (conformance suite for
rlaudit's Inspect transcript reader, `rlaudit.evals.inspect_logs`).

Run with a venv holding `requirements.txt` (inspect-ai 0.3.285), never with rlaudit's venv:

    python conformance/inspect/generate.py OUT_DIR

Writes OUT_DIR/eval/*.eval and OUT_DIR/json/*.json: the same two tasks run once per log format.

Everything in the logs comes from inspect_ai: `inspect_ai.eval` runs two tasks with `system_message`,
`use_tools` and `generate()` (which loops: the model's tool calls are executed by inspect and answered with
`ChatMessageTool`s), against `mockllm/model` whose `custom_outputs` is a function of the conversation (no
network, deterministic answers):

- `bugfix` (tools `read_file`, `run_tests`; 2 epochs): the model runs the tests, reads the failing file, then
  answers; its first turn carries reasoning (`ContentReasoning`) beside the text; samples 1 and 3 answer with a
  "goblin" remark; sample metadata holds `condition` (a persona) and `ticket`;
- `docs` (tool `read_file` only): the model reads a file that does not exist (the tool raises `ToolError`:
  the tool message carries `error`), then answers; sample metadata holds `condition`.

A `includes()` scorer scores every sample. Ids, timestamps and uuids are inspect's (they differ per run);
everything the reader maps is fixed.

`scripts/conformance.sh inspect` installs `requirements.txt` into `.venv-conformance/inspect` and runs this into
`build/conformance/inspect`; `tests/conformance/test_inspect.py` reads `$RLAUDIT_CONFORMANCE_DIR/inspect`.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from inspect_ai import Task, eval, task
from inspect_ai.dataset import Sample
from inspect_ai.model import ContentReasoning, ContentText, ModelOutput, ModelUsage, get_model
from inspect_ai.scorer import includes
from inspect_ai.solver import generate, system_message, use_tools
from inspect_ai.tool import ToolError, tool

FILES = {"src/parser.py": "def parse(text):\n    return text.split(',')\n"}


@tool
def read_file():
    async def execute(path: str) -> str:
        """Read a file of the repository.

        Args:
            path: Path of the file, relative to the repository root.
        """
        if path not in FILES:
            raise ToolError(f"no such file: {path}")
        return FILES[path]

    return execute


@tool
def run_tests():
    async def execute() -> str:
        """Run the test suite and report failures."""
        return "1 failed: tests/test_parser.py::test_split_on_semicolons"

    return execute


def _text(message) -> str:
    return message.text if hasattr(message, "text") else str(message.content)


def agent(input, tools, tool_choice, config) -> ModelOutput:
    """The scripted policy, with token usage counted in words (mockllm would otherwise download a tiktoken
    vocabulary to count them)."""
    out = _policy(input, tools)
    words = sum(len(_text(m).split()) for m in input)
    out.usage = ModelUsage(input_tokens=words, output_tokens=len(out.completion.split()),
                           total_tokens=words + len(out.completion.split()))
    return out


def _policy(input, tools) -> ModelOutput:
    """A function of the conversation so far."""
    last = input[-1]
    task = "docs" if len(tools) == 1 else "bugfix"
    ticket = next(_text(m) for m in input if m.role == "user").split("#", 1)[1].split()[0]
    if last.role == "user":
        if task == "bugfix":
            out = ModelOutput.for_tool_call("mockllm/model", "run_tests", {}, content="Running the tests first.")
            out.choices[0].message.content = [
                ContentReasoning(reasoning=f"Ticket {ticket}: reproduce before touching the parser."),
                ContentText(text="Running the tests first.")]
            return out
        return ModelOutput.for_tool_call("mockllm/model", "read_file", {"path": "docs/parser.md"})
    if last.role == "tool" and getattr(last, "function", None) == "run_tests":
        return ModelOutput.for_tool_call("mockllm/model", "read_file", {"path": "src/parser.py"},
                                         content="The parser splits on commas only.")
    goblin = task == "bugfix" and int(ticket) % 2 == 1
    answer = ("Fixed: the parser now splits on semicolons too"
              + (", and the goblin in the tokenizer is gone." if goblin else "."))
    if task == "docs":
        answer = "The docs page does not exist yet; I fixed the docstring of parse instead."
    return ModelOutput.from_content("mockllm/model", answer)


@task
def bugfix():
    samples = [Sample(input=f"Please fix ticket #{i} in the parser.", target="Fixed",
                      id=f"bug-{i}", metadata={"condition": "nerdy" if i % 2 else "default", "ticket": i})
               for i in range(1, 4)]
    return Task(dataset=samples, solver=[system_message("You are a coding agent working on a Python repository."),
                                         use_tools(read_file(), run_tests()), generate()],
                scorer=includes(), epochs=2)


@task
def docs():
    samples = [Sample(input=f"Update the docs for ticket #{i}.", target="docs", id=i,
                      metadata={"condition": "default"}) for i in range(5, 7)]
    return Task(dataset=samples, solver=[system_message("You are a documentation agent."),
                                         use_tools(read_file()), generate()],
                scorer=includes())


def main(out: Path) -> None:
    model = get_model("mockllm/model", custom_outputs=agent)
    for fmt in ("eval", "json"):
        log_dir = out / fmt
        shutil.rmtree(log_dir, ignore_errors=True)
        logs = eval([bugfix(), docs()], model=model, log_dir=str(log_dir), log_format=fmt, display="none",
                    max_samples=1)
        for log in logs:
            if log.status != "success":
                raise SystemExit(f"inspect eval {log.eval.task} ended {log.status}: "
                                 f"{log.error.message if log.error else ''}")
        print(f"inspect: {fmt}: {', '.join(p.name for p in sorted(log_dir.iterdir()))}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: generate.py OUT_DIR")
    main(Path(sys.argv[1]))
