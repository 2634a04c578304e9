"""Blanking a function in place, and putting it back: what `start N` and `reset N` do to the files.

A blank keeps the function's signature, its docstring and the comments above its first statement, and
replaces the rest of its body by one line:

    def assign(self, x):
        \"\"\"Nearest entry per row: (M, D) -> indices (M,). ...\"\"\"
        raise NotImplementedError("exercise 1: write VectorQuantizer.assign (rvq.py); hint: python -m course hint 1")

Functions are found by their qualified name ("VectorQuantizer.assign") with Python's own parser, so
a blank never depends on line numbers that a student's edits elsewhere in the file would move.
"""
import ast
from pathlib import Path

STUB = 'raise NotImplementedError("exercise {number}: write {name} ({file}); hint: python -m course hint {number}")'


def find_function(source: str, qualname: str) -> ast.FunctionDef:
    """The def of `qualname` ("f" or "Class.method") in `source`; KeyError if it is not there."""
    node = ast.parse(source)
    for part in qualname.split("."):
        matches = [child for child in ast.iter_child_nodes(node)
                   if isinstance(child, (ast.FunctionDef, ast.ClassDef)) and child.name == part]
        if not matches:
            raise KeyError(f"no {qualname} in this file")
        node = matches[0]
    if not isinstance(node, ast.FunctionDef):
        raise KeyError(f"{qualname} is not a function")
    return node


def function_source(source: str, qualname: str) -> str:
    """The text of the whole function, decorators included (lines, as written)."""
    node = find_function(source, qualname)
    first = min([node.lineno] + [d.lineno for d in node.decorator_list])
    return "".join(source.splitlines(keepends=True)[first - 1:node.end_lineno])


def body_lines(node: ast.FunctionDef):
    """(first, last) 1-based lines of the body after the docstring."""
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]
    if not body:
        raise ValueError(f"{node.name} has no code after its docstring")
    return body[0].lineno, node.end_lineno


def is_blank(source: str, qualname: str) -> bool:
    """True when the function's body is a stub `raise NotImplementedError("exercise ...")`."""
    node = find_function(source, qualname)
    first, last = body_lines(node)
    statement = node.body[-1]
    return (first == statement.lineno and isinstance(statement, ast.Raise) and isinstance(statement.exc, ast.Call)
            and getattr(statement.exc.func, "id", None) == "NotImplementedError"
            and "exercise" in ast.unparse(statement.exc))


def blank(source: str, qualname: str, number: int, file: str) -> str:
    """`source` with the body of `qualname` replaced by the stub of exercise `number`."""
    node = find_function(source, qualname)
    first, last = body_lines(node)
    lines = source.splitlines(keepends=True)
    indent = lines[first - 1][:len(lines[first - 1]) - len(lines[first - 1].lstrip())]
    stub = indent + STUB.format(number=number, name=qualname, file=file) + "\n"
    return "".join(lines[:first - 1]) + stub + "".join(lines[last:])


def replace_function(source: str, qualname: str, new_function: str) -> str:
    """`source` with the whole function `qualname` (decorators included) replaced by `new_function`."""
    node = find_function(source, qualname)
    first = min([node.lineno] + [d.lineno for d in node.decorator_list])
    lines = source.splitlines(keepends=True)
    return "".join(lines[:first - 1]) + new_function + "".join(lines[node.end_lineno:])


def read(root: Path, file: str) -> str:
    return (root / file).read_text()
