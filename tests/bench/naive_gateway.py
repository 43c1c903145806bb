"""``parkfleet gateway`` with the naive strategy ``bench-jobs`` compares against.

No checkpoints count: a task's results are held until its car says it is done, and a task
that loses its car starts again from its first item on the next car. Everything else is
the product's gateway. Run as ``python tests/bench/naive_gateway.py gateway ARGS``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from typing import Any

from parkfleet.gateway import command
from parkfleet.gateway.tasks import TaskManager
from parkfleet.gateway.taskstate import Task


class RestartFromScratch(TaskManager):
    """A task manager without resumption: results reach the sink only at the end."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._held: dict[str, list[tuple[int, dict[str, Any]]]] = {}

    async def _deliver(self, task: Task, first: int, outputs: Mapping[str, Any]) -> None:
        held = self._held.setdefault(task.spec.task_id, [])
        held.append((first, {k: v.copy() for k, v in outputs.items()}))

    async def _all_delivered(self, task: Task) -> None:
        for first, outputs in self._held.pop(task.spec.task_id, []):
            await task.spec.sink.write(first, outputs)

    def _left_car(self, task: Task) -> None:
        self._held.pop(task.spec.task_id, None)
        task.delivered = task.checkpoint = task.spec.item_start


def main(argv: list[str]) -> int:
    """Parses ``gateway ARGS`` as ``parkfleet`` does and runs it with the naive strategy."""
    parser = argparse.ArgumentParser(prog="naive_gateway")
    command.register(parser.add_subparsers(dest="command", required=True))
    return command.main(parser.parse_args(argv), task_manager=RestartFromScratch)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
