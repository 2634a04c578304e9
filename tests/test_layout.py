"""The reading rules of DESIGN.md, checked: the tiny recipe is one diff from the paper's configs, no
import cycles or hidden imports, model modules never import the dataset, files fit one sitting, and
every pointer into NOTES.md lands on a heading."""
import ast
import dataclasses
import io
import re
import tokenize
from pathlib import Path

import pytest

import train
from encodec import EncodecConfig
from lm import LMConfig

ROOT = Path(__file__).resolve().parents[1]
# The core at the top level; the published weights (published/) and the scripts (experiments/) apart.
MODULES = sorted(ROOT.glob("*.py")) + sorted((ROOT / "published").glob("*.py")) + sorted((ROOT / "experiments").glob("*.py"))
MODEL_MODULES = ("rvq", "encodec", "losses", "patterns", "transformer", "conditioners", "published.t5", "lm",
                 "musicgen", "published.pretrained", "audio")


def module_name(path: Path) -> str:
    """"lm" for lm.py, "published.t5" for published/t5.py."""
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


PROJECT = {module_name(path) for path in MODULES} | {"published", "experiments"}


def project_imports(path):
    """(top-level imports of project modules, imports made inside functions) of one file."""
    tree = ast.parse(path.read_text())
    top, nested = set(), []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            if isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            else:  # `from published import t5` imports published.t5; `from lm import X` imports lm
                found = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in PROJECT else node.module or ""
                         for a in node.names]
            found = [f for f in found if f in PROJECT]
            if node in tree.body:
                top.update(found)
            else:
                nested.append((node.lineno, found))
    return top, nested


def test_the_tiny_recipe_lists_exactly_the_values_it_changes_each_with_the_papers():
    """TINY_CODEC / TINY_LM / TINY differ from the paper's defaults in exactly the fields written in
    their block of train.py, and each such line says `# paper: ... Why: ...`."""
    source = (ROOT / "train.py").read_text()
    for name, tiny, paper in (("TINY_CODEC", train.TINY_CODEC, EncodecConfig()), ("TINY_LM", train.TINY_LM, LMConfig()),
                              ("TINY", train.TINY, train.Preset())):
        block = re.search(rf"^{name} = [^\n]*\n(.*?)^\)", source, re.S | re.M).group(1)
        listed = {m.group(1) for m in re.finditer(r"^\s+(\w+)=.*# paper: .+ Why: .+$", block, re.M)}
        written = set(re.findall(r"^\s+(\w+)=", block, re.M)) | set(re.findall(r"(\w+)=", block.splitlines()[0]))
        changed = {f.name for f in dataclasses.fields(paper) if getattr(tiny, f.name) != getattr(paper, f.name)}
        if name == "TINY":
            changed -= {"codec", "lm"}  # the two configs above, checked on their own
            written -= {"codec", "lm"}
        assert changed == written, f"{name}: changed {sorted(changed ^ written)} without listing (or listed unchanged)"
        assert listed == written, f"{name}: lines without '# paper: ... Why: ...': {sorted(written - listed)}"


def test_no_import_cycle_and_no_import_inside_a_function():
    graph = {}
    for path in MODULES:
        top, nested = project_imports(path)
        assert not nested, f"{path.name}: imports inside functions {nested}"
        graph[module_name(path)] = top

    def visit(module, stack):
        assert module not in stack, f"import cycle: {' -> '.join(stack + [module])}"
        for other in graph.get(module, ()):
            visit(other, stack + [module])
    for module in graph:
        visit(module, [])


@pytest.mark.parametrize("module", MODEL_MODULES)
def test_model_modules_never_import_the_dataset(module):
    seen, todo = set(), [module]
    while todo:  # every module it imports, directly or not
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += project_imports(ROOT / (name.replace(".", "/") + ".py"))[0]
    assert not seen & {"data", "ddp", "train", "stages", "evaluate"}, sorted(seen)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_every_file_reads_in_one_sitting(path):
    assert len(path.read_text().splitlines()) < 600  # one concept a file, readable in one sitting


def comment_lines(path):
    """Line number -> text of every comment and docstring line of a Python file."""
    lines = {}
    for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
        if tok.type == tokenize.COMMENT:
            lines[tok.start[0]] = tok.string
        elif tok.type == tokenize.STRING and tok.string.lstrip("rbuRBU").startswith(('"""', "'''")):
            for i, line in enumerate(tok.string.splitlines()):
                lines[tok.start[0] + i] = line
    return lines


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_comments_explain_rather_than_log_measurements(path):
    """Measured figures belong in NOTES.md: at most 5% of a module's comment lines carry a decimal
    figure, a percentage or a ratio (this counts constants too, so it errs on the strict side)."""
    figure = re.compile(r"\d\.\d{2}|\d+(\.\d+)?\s?%|\d+(\.\d+)?\s?(×|x)\b|\bvs\.?\b\s*\d")
    lines = comment_lines(path)
    with_figures = [text for text in lines.values() if figure.search(text)]
    assert len(with_figures) <= 0.05 * len(lines), with_figures
    assert not any(re.search(r"\bsessions?\b|\bcommit [0-9a-f]{7}", text) for text in lines.values())


def test_every_pointer_into_notes_lands_on_a_heading():
    headings = set(re.findall(r"^#+ (.+?)\s*$", (ROOT / "NOTES.md").read_text(), re.M))
    pointers = set()
    for path in MODULES + [ROOT / "README.md"]:
        pointers |= set(re.findall(r'NOTES\.md,?\s+"([^"]+)"', path.read_text().replace("\n#", " ").replace("\n", " ")))
    assert pointers, "no pointer found: the pattern is stale"
    assert pointers <= headings, sorted(pointers - headings)
