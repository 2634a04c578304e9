"""Proof that every exercise's checks can fail, and fail for the right reason (instructors; CI runs it).

    python -m course selfcheck          # every exercise (several minutes)
    python -m course selfcheck 3 7      # only these

In a temporary copy of the repository, for each exercise N:
  1. blank N (as `start` does): every check must report "not written yet", the NotImplementedError of
     the blank, and none may crash on an import or pass by accident;
  2. plant each typical mistake of course/planted/exNN_*.py, one at a time: some check must fail, and a
     failing message must say what the mistake is about (the `says` words);
  3. the reference (the repository's own code, or the project's SOLUTION) must pass every check, each
     within CHECK_SECONDS;
  4. with N blanked, every other exercise must still pass: no check leans on another exercise's code.
"""
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from course import blanks
from course.grading import ROOT, modules, planted

CHECK_SECONDS = 30.0  # the course's budget per check on 2 cores


def tracked_files() -> list:
    """The repository's files as git knows them (a clone's), or every file but outputs and caches."""
    try:
        result = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                                capture_output=True, text=True)
        if result.returncode == 0:
            return [f for f in result.stdout.splitlines() if (ROOT / f).is_file()]
    except OSError:
        pass
    skip = {".git", ".course", "runs", "data", "__pycache__", ".pytest_cache"}
    return [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file() and not skip & set(p.parts)]


def grade(copy: Path, numbers) -> list:
    """Run the checks of `numbers` in `copy`: one dict per check (see grading.run_check)."""
    result = subprocess.run([sys.executable, "-m", "course.grading", *map(str, numbers), "--json"], cwd=copy,
                            capture_output=True, text=True, timeout=600)
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    if not lines:
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        return [dict(check="(the checks did not run)", status="error", message=tail, seconds=0.0, exercise=numbers[0])]
    return lines


def blank_in(copy: Path, exercise):
    """Blank `exercise` in the copy; returns the files' originals to restore."""
    originals = {}
    if exercise.project:
        (copy / exercise.project).parent.mkdir(parents=True, exist_ok=True)
        (copy / exercise.project).write_text(exercise.template)
        return {exercise.project: None}
    for file, name in exercise.blanks:
        originals.setdefault(file, (copy / file).read_text())
        (copy / file).write_text(blanks.blank((copy / file).read_text(), name, exercise.number, file))
    return originals


def restore(copy: Path, originals: dict):
    for file, text in originals.items():
        if text is None:
            (copy / file).unlink(missing_ok=True)
        else:
            (copy / file).write_text(text)


def check_exercise(copy: Path, number: int, exercise, others: dict) -> tuple:
    """The four proofs for one exercise: a list of problems (empty: all hold) and a timing line."""
    problems = []
    instructor = planted(number)
    # 1. the blank: every check says "not written yet"
    originals = blank_in(copy, exercise)
    results = grade(copy, [number])
    not_todo = [r for r in results if r["status"] != "todo"]
    if not_todo:
        problems.append(f"blank: {len(not_todo)} check(s) did not report the blank, e.g. "
                        f"{not_todo[0]['check']!r}: {not_todo[0]['status']} {not_todo[0]['message'][:160]}")
    # 4. meanwhile, the other exercises must not notice the blank (the other projects: their solutions)
    if others:
        solved = {}
        for other, other_exercise in others.items():
            if other_exercise.project:
                solved[other_exercise.project] = None
                (copy / other_exercise.project).parent.mkdir(parents=True, exist_ok=True)
                (copy / other_exercise.project).write_text(planted(other).SOLUTION)
        broken = [r for r in grade(copy, list(others)) if r["status"] != "ok"]
        restore(copy, solved)
        if broken:
            problems.append(f"blanking {number} breaks exercise {broken[0]['exercise']}: {broken[0]['check']!r}: "
                            f"{broken[0]['message'][:160]}")
    restore(copy, originals)
    # 2. each planted mistake fails with its message
    mistakes = getattr(instructor, "MISTAKES", []) if instructor else []
    solution = getattr(instructor, "SOLUTION", None) if instructor else None
    if exercise.project and solution is None:
        problems.append("no SOLUTION in course/planted for this project")
    for mistake in mistakes:
        path = copy / mistake.file
        reference = solution if exercise.project else path.read_text()
        if reference.count(mistake.original) != 1:
            problems.append(f"mistake {mistake.name!r}: its original text occurs {reference.count(mistake.original)} "
                            f"times in {mistake.file} (must be once: the list must follow the code)")
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(reference.replace(mistake.original, mistake.planted))
        results = grade(copy, [number])
        failing = [r for r in results if r["status"] != "ok"]
        if not failing:
            problems.append(f"mistake {mistake.name!r} passes every check")
        elif not any(mistake.says in r["message"] for r in failing):
            problems.append(f"mistake {mistake.name!r} fails, but no message says {mistake.says!r}: "
                            f"{failing[0]['message'][:160]}")
        if exercise.project:
            path.unlink()
        else:
            path.write_text(reference)
    if len(mistakes) < 1:
        problems.append("no planted mistake")
    # 3. the reference passes, each check within the budget
    if exercise.project and solution is not None:
        (copy / exercise.project).parent.mkdir(parents=True, exist_ok=True)
        (copy / exercise.project).write_text(solution)
    results = grade(copy, [number])
    if exercise.project:
        (copy / exercise.project).unlink(missing_ok=True)
    for r in results:
        if r["status"] != "ok":
            problems.append(f"reference fails {r['check']!r}: {r['message'][:160]}")
        elif r["seconds"] > CHECK_SECONDS:
            problems.append(f"{r['check']!r} takes {r['seconds']:.0f} s (budget {CHECK_SECONDS:.0f} s)")
    slowest = max((r["seconds"] for r in results), default=0.0)
    timing = f"{len(results)} checks, {len(mistakes)} mistakes, slowest check {slowest:.1f} s"
    return problems, timing


def main(numbers=None) -> int:
    exercises = {n: m.EXERCISE for n, m in modules().items()}
    if planted(min(exercises)) is None:
        print("error: course/planted/ is missing (a handout has no planted mistakes)", file=sys.stderr)
        return 2
    chosen = numbers or sorted(exercises)
    began, failures = time.time(), 0
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "repo"
        for file in tracked_files():
            if not file.startswith(".course/"):
                (copy / file).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / file, copy / file)
        for number in chosen:
            started = time.time()
            others = {n: exercises[n] for n in sorted(exercises) if n != number}
            problems, timing = check_exercise(copy, number, exercises[number], others)
            verdict = "ok  " if not problems else "FAIL"
            print(f"{verdict} {number:2d} {exercises[number].title}: {timing}; {time.time() - started:.0f} s", flush=True)
            for problem in problems:
                print(f"       {problem}", flush=True)
            failures += bool(problems)
    print(f"selfcheck: {len(chosen) - failures} of {len(chosen)} exercises proven, {time.time() - began:.0f} s")
    return 1 if failures else 0
