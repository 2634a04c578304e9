"""What an exercise is, and how its checks run and report.

An exercise is one module of course/exercises/ (ex01_nearest_code.py, ...): its docstring is the task,
`EXERCISE` says which functions it blanks and gives its hints, and every function named `check_*` is
one check, run in the order written. A check passes by returning; it fails by raising `Wrong` with a
sentence a student can act on ("codebook 2 differs: is the residual of level 1 subtracted before level
2 quantizes?"). A check that meets the blank's NotImplementedError reports "not written yet".

Checks do not lean on the code they grade: their answers are computed by hand in the check, stored
as small fixtures (course/fixtures/, with the command that wrote them), or are properties (an inverse
undoes, a cached pass equals a full pass). Where a check needs another exercise's function it uses a
short reference form of its own, so blanking one exercise never breaks another's checks.

    python -m course.grading 3          # run exercise 3's checks here (what `python -m course check 3` calls)
    python -m course.grading 3 --json   # one JSON line per check (the self-check reads these)
"""
import importlib
import importlib.util
import json
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXERCISES = ROOT / "course" / "exercises"
PLANTED = ROOT / "course" / "planted"


class Wrong(AssertionError):
    """A check's verdict: the sentence says what is wrong and where to look."""


@dataclass
class Exercise:
    number: int
    title: str
    section: str                       # the paper's section, e.g. "§2.1"
    blanks: list = field(default_factory=list)   # [(file, "Class.method"), ...] blanked by `start`
    hints: list = field(default_factory=list)    # shown one at a time by `hint`
    project: str = None                # an open project: the file the student writes (from `template`)
    template: str = None               # that file's starting text (functions raising NotImplementedError)

    @property
    def files(self) -> list:
        return sorted({file for file, _ in self.blanks} | ({self.project} if self.project else set()))


@dataclass
class Mistake:
    """A planted wrong solution (course/planted/): in `file`, `original` becomes `planted`; the
    exercise's checks must fail and one failing message must contain `says`."""
    name: str
    file: str
    original: str
    planted: str
    says: str


def modules():
    """{number: exercise module}, from the files course/exercises/exNN_*.py."""
    found = {}
    for path in sorted(EXERCISES.glob("ex[0-9][0-9]_*.py")):
        module = importlib.import_module(f"course.exercises.{path.stem}")
        found[module.EXERCISE.number] = module
    return found


def planted(number: int):
    """The instructor's module of exercise `number` (MISTAKES, and SOLUTION for a project), or None
    (a handout has no course/planted/)."""
    path = next(PLANTED.glob(f"ex{number:02d}_*.py"), None) if PLANTED.is_dir() else None
    return importlib.import_module(f"course.planted.{path.stem}") if path else None


def load_project(exercise):
    """The student's file of a project (exercise.project) as a module; NotImplementedError (reported
    as "not written yet") while it does not exist."""
    path = ROOT / exercise.project
    if not path.exists():
        raise NotImplementedError(f"project {exercise.number}: `python -m course start {exercise.number}` "
                                  f"creates {exercise.project}")
    spec = importlib.util.spec_from_file_location(f"project_{exercise.number}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def checks(module) -> list:
    """The module's check_* functions, in the order they are written."""
    found = [value for name, value in vars(module).items() if name.startswith("check_") and callable(value)]
    return sorted(found, key=lambda fn: fn.__code__.co_firstlineno)


def describe(fn) -> str:
    """A check's one-line description: the first line of its docstring."""
    return (fn.__doc__ or fn.__name__).strip().splitlines()[0]


def run_check(fn) -> dict:
    """Run one check: {"check", "status": ok | wrong | todo | error, "message", "seconds"}."""
    began = time.perf_counter()
    try:
        fn()
        status, message = "ok", ""
    except Wrong as error:
        status, message = "wrong", str(error)
    except NotImplementedError as error:
        status, message = "todo", f"not written yet ({error})"
    except Exception as error:  # the student's code crashed: say where, in one line
        frame = traceback.extract_tb(error.__traceback__)[-1]
        status = "error"
        message = f"{type(error).__name__}: {error} (at {Path(frame.filename).name}:{frame.lineno})"
    return dict(check=describe(fn), status=status, message=message, seconds=time.perf_counter() - began)


MARKS = {"ok": "ok  ", "wrong": "FAIL", "todo": "TODO", "error": "FAIL"}


def main(argv=None):
    args = sys.argv[1:] if argv is None else argv
    as_json = "--json" in args
    numbers = [int(a) for a in args if a != "--json"]
    exercises = modules()
    failed = 0
    for number in numbers:
        module = exercises[number]
        results = [run_check(fn) for fn in checks(module)]
        for result in results:
            if as_json:
                print(json.dumps(dict(result, exercise=number)), flush=True)
            else:
                line = f"  {MARKS[result['status']]} {result['check']}"
                print(line + (f"\n       {result['message']}" if result["message"] else ""), flush=True)
        bad = sum(r["status"] != "ok" for r in results)
        failed += bad
        if not as_json:
            verdict = (f"all {len(results)} checks pass" if not bad else f"{bad} of {len(results)} checks fail")
            print(f"exercise {number}: {verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    # Run as the module course.grading, not as __main__: the exercises raise course.grading.Wrong, and a
    # second copy of this file under the name __main__ would have a Wrong class of its own.
    import course.grading
    sys.exit(course.grading.main())
