"""Plausible bugs for one Python module, found by walking its AST: source in, mutants out.

Each mutant replaces one span of the source (an operator's expression, a constant, a
statement) and nothing else, so its diff is one small hunk. The order is the AST's walk
order, so the same source always gives the same mutants with the same numbers.

Left alone, because a change there is noise rather than a bug a test should catch:
strings (log and error texts, f-strings), docstrings, type annotations, and calls to a
logger (``log.info(...)``).
"""

from __future__ import annotations

import ast
import copy
from collections.abc import Iterator

import attrs

COMPARE_SWAPS: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
}
BINOP_SWAPS: dict[type[ast.operator], type[ast.operator]] = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Div,
    ast.Div: ast.Mult,
    ast.FloorDiv: ast.Mult,
    ast.BitOr: ast.BitAnd,
    ast.BitAnd: ast.BitOr,
}
LOGGERS = {"log", "logger", "logging"}


@attrs.frozen
class Mutant:
    number: int
    line: int
    kind: str  # compare, boolop, not, binop, constant, condition, drop, return, minmax, swap_args, dict_*
    description: str
    source: str  # the whole mutated module


@attrs.frozen
class _Edit:
    node: ast.AST
    replacement: str
    kind: str
    description: str


def _skipped(module: ast.Module) -> set[int]:
    """ids of nodes whose subtrees are never mutated (docstrings, annotations, logger calls)."""
    skip: set[int] = set()

    def mark(node: ast.AST | None) -> None:
        if node is not None:
            skip.update(id(n) for n in ast.walk(node))

    for node in ast.walk(module):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                mark(body[0])
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            mark(node.returns)
            for arg in [*node.args.args, *node.args.kwonlyargs, *node.args.posonlyargs]:
                mark(arg.annotation)
            for arg in (node.args.vararg, node.args.kwarg):
                if arg is not None:
                    mark(arg.annotation)
        elif isinstance(node, ast.AnnAssign):
            mark(node.annotation)
        elif isinstance(node, ast.JoinedStr):
            mark(node)
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) and _is_logger_call(node.value):
            mark(node)  # the log line, and dropping it
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            mark(node)
    return skip


def _is_logger_call(node: ast.Call) -> bool:
    func = node.func
    return isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id in LOGGERS


def _expr(node: ast.expr) -> str:
    return f"({ast.unparse(node)})"


def _edits(node: ast.AST) -> Iterator[_Edit]:
    """Every mutation of ``node`` itself (not of its children)."""
    if isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            swap = COMPARE_SWAPS.get(type(op))
            if swap is not None:
                new = copy.deepcopy(node)
                new.ops[i] = swap()
                yield _Edit(node, _expr(new), "compare", f"{_op(op)} -> {_op(swap())}")
    elif isinstance(node, ast.BoolOp):
        new = copy.deepcopy(node)
        new.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        yield _Edit(node, _expr(new), "boolop", f"{_op(node.op)} -> {_op(new.op)}")
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        yield _Edit(node, _expr(node.operand), "not", "drop 'not'")
    elif isinstance(node, ast.BinOp):
        swap = BINOP_SWAPS.get(type(node.op))
        if swap is not None:
            new = copy.deepcopy(node)
            new.op = swap()
            yield _Edit(node, _expr(new), "binop", f"{_op(node.op)} -> {_op(swap())}")
    elif isinstance(node, ast.Constant):
        yield from _constant_edits(node)
    elif isinstance(node, (ast.If, ast.While)):
        yield _Edit(node.test, f"not {_expr(node.test)}", "condition", "negate the condition")
    elif isinstance(node, ast.Return) and node.value is not None:
        if not (isinstance(node.value, ast.Constant) and node.value.value is None):
            yield _Edit(node.value, "None", "return", "return None instead")
    elif isinstance(node, ast.Call):
        yield from _call_edits(node)
    elif isinstance(node, ast.Dict):
        yield from _dict_edits(node)
    if _droppable(node):
        yield _Edit(node, "pass", "drop", f"drop the statement {ast.unparse(node).splitlines()[0][:60]!r}")


def _constant_edits(node: ast.Constant) -> Iterator[_Edit]:
    value = node.value
    if isinstance(value, bool):
        yield _Edit(node, str(not value), "constant", f"{value} -> {not value}")
    elif isinstance(value, int):
        yield _Edit(node, str(value + 1), "constant", f"{value} -> {value + 1}")
    elif isinstance(value, float):
        new = 1.0 if value == 0 else value * 2
        yield _Edit(node, repr(new), "constant", f"{value} -> {new}")


def _call_edits(node: ast.Call) -> Iterator[_Edit]:
    if isinstance(node.func, ast.Name) and node.func.id in ("min", "max"):
        other = "max" if node.func.id == "min" else "min"
        new = copy.deepcopy(node)
        new.func = ast.Name(other, ast.Load())
        yield _Edit(node, ast.unparse(new), "minmax", f"{node.func.id} -> {other}")
    args = node.args
    # Swapped arguments of different kinds (a level and a message, a name and a value) fail at once
    # or only change a text: swap only two plain values, as in f(a.x, b.y) -> f(b.y, a.x).
    if len(args) >= 2 and not any(isinstance(a, (ast.Starred, ast.Constant, ast.JoinedStr)) for a in args[:2]):
        if ast.dump(args[0]) != ast.dump(args[1]):
            new = copy.deepcopy(node)
            new.args[0], new.args[1] = new.args[1], new.args[0]
            yield _Edit(node, ast.unparse(new), "swap_args", "swap the first two arguments")


def _dict_edits(node: ast.Dict) -> Iterator[_Edit]:
    """A table missing an entry, or an entry pointing at another of the table's values (a wrong transition)."""
    entries = [(k, v) for k, v in zip(node.keys, node.values, strict=True) if k is not None]
    if len(entries) != len(node.keys):
        return  # {**spread}: leave it
    values = list(dict.fromkeys(ast.unparse(v) for _, v in entries))
    for i, (key, value) in enumerate(entries):
        rest = [f"{ast.unparse(k)}: {ast.unparse(v)}" for j, (k, v) in enumerate(entries) if j != i]
        yield _Edit(node, "{" + ", ".join(rest) + "}", "dict_drop", f"drop the entry {ast.unparse(key)[:50]}")
        if len(values) > 1 and not isinstance(value, (ast.Dict, ast.Constant, ast.JoinedStr)):
            other = values[(values.index(ast.unparse(value)) + 1) % len(values)]
            description = f"{ast.unparse(key)[:40]}: {ast.unparse(value)[:40]} -> {other[:40]}"
            yield _Edit(value, other, "dict_value", description)


def _droppable(node: ast.AST) -> bool:
    """Statements whose absence is a plausible bug: an action not taken, a state not updated, an error not raised."""
    if isinstance(node, ast.Expr):
        return isinstance(node.value, (ast.Call, ast.Await))
    if isinstance(node, (ast.Assign, ast.AugAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return all(isinstance(t, (ast.Attribute, ast.Subscript)) for t in targets)
    return isinstance(node, (ast.Raise, ast.Delete))


def _op(op: ast.AST) -> str:
    if isinstance(op, ast.cmpop):
        return {
            ast.Lt: "<",
            ast.LtE: "<=",
            ast.Gt: ">",
            ast.GtE: ">=",
            ast.Eq: "==",
            ast.NotEq: "!=",
            ast.Is: "is",
            ast.IsNot: "is not",
            ast.In: "in",
            ast.NotIn: "not in",
        }[type(op)]
    if isinstance(op, ast.boolop):
        return "and" if isinstance(op, ast.And) else "or"
    return {
        ast.Add: "+",
        ast.Sub: "-",
        ast.Mult: "*",
        ast.Div: "/",
        ast.FloorDiv: "//",
        ast.BitOr: "|",
        ast.BitAnd: "&",
    }.get(type(op), type(op).__name__)


def _replace(source: bytes, node: ast.AST, replacement: str) -> bytes:
    """``source`` with ``node``'s span replaced (AST columns are UTF-8 byte offsets)."""
    lines = source.splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    begin = starts[node.lineno - 1] + node.col_offset  # type: ignore[attr-defined]
    end = starts[node.end_lineno - 1] + node.end_col_offset  # type: ignore[attr-defined]
    return source[:begin] + replacement.encode() + source[end:]


def mutants(source: str) -> list[Mutant]:
    """Every mutant of ``source`` that compiles and differs from it, numbered from 1 in source order."""
    module = ast.parse(source)
    skip = _skipped(module)
    edits = [edit for node in ast.walk(module) if id(node) not in skip for edit in _edits(node)]
    edits.sort(key=_position)  # a stable sort: edits of one node keep their order
    original, raw = ast.dump(module), source.encode()
    found: list[Mutant] = []
    seen = {original}
    for edit in edits:
        new = _replace(raw, edit.node, edit.replacement).decode()
        try:
            dumped = ast.dump(ast.parse(new))
        except SyntaxError:
            continue
        if dumped in seen:
            continue  # no change at all, or the same program as an earlier mutant
        seen.add(dumped)
        found.append(Mutant(len(found) + 1, _position(edit)[0], edit.kind, edit.description, new))
    return found


def _position(edit: _Edit) -> tuple[int, int]:
    return edit.node.lineno, edit.node.col_offset  # type: ignore[attr-defined]
