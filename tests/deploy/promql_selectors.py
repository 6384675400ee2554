"""Parse PromQL expressions with a real PromQL parser and list their vector selectors.

Runs under the tools virtualenv (.venv-tools, package promql-parser); test_dashboard.py feeds it
a JSON list of expressions on stdin and reads, for each, either {"error": message} or
{"selectors": [{"name": metric, "matchers": [[label, op, value], ...]}, ...]}.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import promql_parser

OPS = {"Equal": "=", "NotEqual": "!=", "Re": "=~", "NotRe": "!~"}


def selectors(expr: str) -> dict[str, Any]:
    try:
        ast = promql_parser.parse(expr)
    except Exception as exc:  # a syntax error is a result, not a crash
        return {"error": f"{type(exc).__name__}: {exc}"}
    found: list[dict[str, Any]] = []

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            matchers = [
                [m.name, OPS[str(m.op).rsplit(".", 1)[-1]], m.value]
                for m in (node.matchers.matchers if node.matchers else [])
            ]
            found.append({"name": node.name, "matchers": matchers})
        return True

    promql_parser.walk(ast, visit)
    return {"selectors": found}


def main() -> int:
    exprs = json.load(sys.stdin)
    json.dump([selectors(e) for e in exprs], sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
