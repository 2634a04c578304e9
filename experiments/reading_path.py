"""The reading path, measured: which functions a short tiny `train.py` run and one `generate.py --run`
execute, and how many lines those functions span, per file (the toy dataset built beforehand).

    pip install coverage && python -m experiments.reading_path

It runs both commands under coverage.py (in a temporary folder, a few steps of each stage on a few
toy clips), then counts, for every project file, the lines of each function or method (its `def`
to its last line, docstring included) of which at least one line ran. Module-level code (imports,
dataclasses, constants) is not counted; classes count through their executed methods. A file is on
the path when one of its functions ran. This is the figure the README's reading order is built on.
"""
import ast
import importlib
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

# A measuring tool, not a dependency: without it main() says how to install it.
coverage = importlib.import_module("coverage") if importlib.util.find_spec("coverage") else None

ROOT = Path(__file__).resolve().parents[1]


def functions(path: Path):
    """(name, first line, first line of the body, last line) of every function and method in one file,
    nested ones excluded. The first line is the decorator's, if any."""
    tree = ast.parse(path.read_text())
    found = []

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([child.lineno] + [d.lineno for d in child.decorator_list])
                found.append((prefix + child.name, start, child.body[0].lineno, child.end_lineno))
            elif isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")
    visit(tree, "")
    return found


def measure(executed: dict) -> dict:
    """{file: (lines of executed functions, names)} from {absolute path: set of executed lines}."""
    path_lines = {}
    for file, lines in executed.items():
        path = Path(file)
        if path.suffix != ".py" or ROOT not in path.parents or "tests" in path.parts:
            continue
        # A function ran when a line of its body ran (its def and decorators run at import).
        ran = [(name, a, b) for name, a, body, b in functions(path) if any(body <= n <= b for n in lines)]
        if ran:
            path_lines[str(path.relative_to(ROOT))] = (sum(b - a + 1 for _, a, b in ran), [n for n, _, _ in ran])
    return path_lines


def main():
    if coverage is None:
        sys.exit("error: this measurement needs coverage.py (pip install coverage)")
    with tempfile.TemporaryDirectory() as tmp:
        # Run from the temporary folder, on a toy dataset (data/toy) built there first, outside the
        # measurement: the data is prepared once (as nanoGPT's prepare.py), the path is what a run reads.
        subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r}); import toy; "
                        "toy.make_toy_dataset('data/toy', n=24, seed=0)"], cwd=tmp, check=True, stdout=subprocess.DEVNULL)
        coverage_run = [sys.executable, "-m", "coverage", "run", "--parallel-mode", f"--data-file={tmp}/.coverage"]
        train_cmd = coverage_run + [str(ROOT / "train.py"), "--out=run", "--n_clips=24", "--codec_steps=4",
                                    "--lm_steps=4", "--codec_batch=4", "--lm_batch=4", "--eval-every=2"]
        subprocess.run(train_cmd, cwd=tmp, check=True, stdout=subprocess.DEVNULL)
        generate_cmd = coverage_run + [str(ROOT / "generate.py"), "--run=run", "--text=a calm piano melody",
                                       "--duration=1", "--out=out.wav"]
        subprocess.run(generate_cmd, cwd=tmp, check=True, stdout=subprocess.DEVNULL)
        data = coverage.Coverage(data_file=f"{tmp}/.coverage")
        data.combine()
        covered = data.get_data()
        executed = {f: set(covered.lines(f) or ()) for f in covered.measured_files()}
    path_lines = measure(executed)
    total = sum(n for n, _ in path_lines.values())
    for file, (n, names) in sorted(path_lines.items(), key=lambda kv: -kv[1][0]):
        print(f"{n:6d}  {file}  ({len(names)} functions)")
    print(f"{total:6d}  in {len(path_lines)} files")
    print(json.dumps({"files": len(path_lines), "lines": total}))


if __name__ == "__main__":
    main()
