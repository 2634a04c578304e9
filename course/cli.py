"""The course's commands (python -m course ...): list, start, check, reset, hint, handout, selfcheck.

`start N` blanks exercise N in this working tree, so the student's code runs in the real pipeline
(their RVQ trains the real codec). What `start` removes is kept in .course/ (ignored by git) so that
`reset N` puts it back; `start` refuses to overwrite edits the last commit does not have.
"""
import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from course import blanks, selfcheck
from course.selfcheck import tracked_files
from course.grading import ROOT, modules

STATE = ROOT / ".course"


# ---- what .course/state.json remembers ----------------------------------------------------------------
def load_state() -> dict:
    path = STATE / "state.json"
    return json.loads(path.read_text()) if path.exists() else {}


def save_state(state: dict):
    STATE.mkdir(exist_ok=True)
    tmp = STATE / "state.json.tmp"
    tmp.write_text(json.dumps(state, indent=1))
    tmp.replace(STATE / "state.json")  # atomic: an interrupted save keeps the old state


def fingerprint(exercise) -> str:
    """A hash of the student's current answer: the blanked functions, or the project's file."""
    parts = []
    for file, name in exercise.blanks:
        try:
            parts.append(blanks.function_source((ROOT / file).read_text(), name))
        except (KeyError, SyntaxError):
            parts.append("<unreadable>")
    if exercise.project:
        path = ROOT / exercise.project
        parts.append(path.read_text() if path.exists() else "<missing>")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def status(exercise, state: dict) -> str:
    """untouched (as the repository has it), blank (started, nothing written), edited, or solved (the
    last `check` passed on exactly the current answer)."""
    entry = state.get(str(exercise.number))
    if exercise.project:
        path = ROOT / exercise.project
        if not path.exists():
            return "untouched"
        written = path.read_text() != exercise.template
    else:
        try:
            sources = [(ROOT / file).read_text() for file, _ in exercise.blanks]
            blank = [blanks.is_blank(source, name) for source, (_, name) in zip(sources, exercise.blanks)]
        except (KeyError, SyntaxError):
            return "edited"
        if entry is None and not any(blank):
            return "untouched"
        written = not all(blank)
    if not written:
        return "blank"
    return "solved" if entry and entry.get("passed") == fingerprint(exercise) else "edited"


def fail(message: str):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def exercise_or_fail(number: int):
    exercises = modules()
    if number not in exercises:
        fail(f"no exercise {number}; `python -m course list` shows them (1-{max(exercises)})")
    return exercises[number].EXERCISE


# ---- the commands -------------------------------------------------------------------------------------
def command_list(args):
    state = load_state()
    for number, module in modules().items():
        e = module.EXERCISE
        kind = "project: " if e.project else ""
        print(f"{number:2d}  {kind}{e.title}  ({e.section}; {', '.join(e.files)})  [{status(e, state)}]")


def committed(file: str):
    """The file as the last commit has it, or None (no git, or not committed)."""
    try:
        result = subprocess.run(["git", "show", f"HEAD:{file}"], cwd=ROOT, capture_output=True, text=True)
    except OSError:
        return None
    return result.stdout if result.returncode == 0 else None


def command_start(args):
    e = exercise_or_fail(args.number)
    state = load_state()
    if str(e.number) in state:
        fail(f"exercise {e.number} is already started; `python -m course reset {e.number}` puts the original back")
    if e.project:
        path = ROOT / e.project
        if path.exists():
            fail(f"{e.project} exists already; move it away to start project {e.number} afresh")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(e.template)
        state[str(e.number)] = dict(originals={})
        save_state(state)
        print(f"project {e.number}: write {e.project}, then `python -m course check {e.number}`")
        return
    originals = {}
    for file, name in e.blanks:
        source = originals.setdefault(file, (ROOT / file).read_text())
        if blanks.is_blank(source, name):
            fail(f"{file}: {name} is blank already (a handout?); write it, then `python -m course check {e.number}`")
        head = committed(file)
        if not args.force and head is not None and blanks.function_source(head, name) != blanks.function_source(source, name):
            fail(f"{file}: {name} differs from the last commit (your edits?); commit them, or pass --force to "
                 f"blank it anyway (reset {e.number} then restores today's version)")
    changed = dict(originals)
    for file, name in e.blanks:
        changed[file] = blanks.blank(changed[file], name, e.number, file)
    state[str(e.number)] = dict(originals=originals)
    save_state(state)  # the originals are safe before any file changes
    for file, text in changed.items():
        (ROOT / file).write_text(text)
    names = ", ".join(f"{name} ({file})" for file, name in e.blanks)
    print(f"exercise {e.number}, {e.title}: blanked {names}.\nWrite it, then `python -m course check {e.number}`; "
          f"`python -m course hint {e.number}` for a hint.")


def command_check(args):
    e = exercise_or_fail(args.number)
    began = time.time()
    result = subprocess.run([sys.executable, "-m", "course.grading", str(e.number)], cwd=ROOT, timeout=args.timeout)
    state = load_state()
    if result.returncode == 0 and str(e.number) in state:
        state[str(e.number)]["passed"] = fingerprint(e)
        save_state(state)
    print(f"({time.time() - began:.0f} s)")
    sys.exit(0 if result.returncode == 0 else 1)


def command_reset(args):
    e = exercise_or_fail(args.number)
    state = load_state()
    entry = state.get(str(e.number))
    if entry is None:
        fail(f"exercise {e.number} was not started here (in a handout the originals are not included)")
    backups = STATE / "backup" / time.strftime("%Y%m%d-%H%M%S")
    if e.project:
        path = ROOT / e.project
        if path.exists():
            backups.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, backups / path.name)
            path.unlink()
            print(f"your {e.project} is kept in {backups}")
    for file, original in entry["originals"].items():
        current = (ROOT / file).read_text()
        backups.mkdir(parents=True, exist_ok=True)
        (backups / file.replace("/", "__")).write_text(current)  # the student's version, never lost
        try:
            restored = current
            for blank_file, name in e.blanks:
                if blank_file == file:
                    restored = blanks.replace_function(restored, name, blanks.function_source(original, name))
        except (KeyError, SyntaxError):
            restored = original  # the file does not parse: the whole file as it was at `start`
            print(f"{file} does not parse; restored as it was at `start` (your version: {backups})")
        (ROOT / file).write_text(restored)
    del state[str(e.number)]
    save_state(state)
    print(f"exercise {e.number} reset: the original is back (your version is kept in {backups})")


def command_hint(args):
    e = exercise_or_fail(args.number)
    state = load_state()
    shown = state.setdefault("hints", {}).get(str(e.number), 0)
    if shown >= len(e.hints):
        print(f"no more hints for exercise {e.number} ({len(e.hints)} given); the checks' messages say what differs")
        return
    print(f"hint {shown + 1} of {len(e.hints)}: {e.hints[shown]}")
    state["hints"][str(e.number)] = shown + 1
    save_state(state)


def parse_range(text: str) -> list:
    """"1-8" / "1,3,5-7" -> [1, 2, ...]."""
    numbers = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        numbers += list(range(int(low), int(high or low) + 1))
    return numbers


def command_handout(args):
    out = Path(args.out).resolve()
    if out.exists() and any(out.iterdir()):
        fail(f"{out} exists and is not empty")
    try:
        numbers = parse_range(args.exercises)
    except ValueError:
        fail(f"--exercises {args.exercises!r}: write numbers like 1-8 or 1,3,5-7")
    exercises = {n: exercise_or_fail(n) for n in numbers}
    for file in tracked_files():
        if file.startswith(("course/planted/", ".course/")):
            continue  # the planted mistakes quote the solutions
        target = out / file
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / file, target)
    for e in exercises.values():
        if e.project:
            continue  # a project's file is created by `start` in the student's copy
        for file, name in e.blanks:
            path = out / file
            path.write_text(blanks.blank(path.read_text(), name, e.number, file))
    print(f"handout in {out}: exercises {', '.join(map(str, numbers))} blanked, the planted mistakes left out")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m course", description="The course: exercises graded by tests.")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the exercises in reading order, with their status here")
    for name, text in (("start", "blank exercise N in this working tree"), ("check", "grade exercise N"),
                       ("reset", "put exercise N's original code back"), ("hint", "the next hint of exercise N")):
        q = sub.add_parser(name, help=text)
        q.add_argument("number", type=int)
        if name == "start":
            q.add_argument("--force", action="store_true", help="blank even if the function has uncommitted edits")
        if name == "check":
            q.add_argument("--timeout", type=float, default=300, help="seconds before the check is stopped")
    q = sub.add_parser("handout", help="a copy of the repository with exercises blanked, for an instructor")
    q.add_argument("out")
    q.add_argument("--exercises", default="1-99", help="which, e.g. 1-8 or 1,3,5-7 (default: all)")
    q = sub.add_parser("selfcheck", help="prove every check able to fail (instructors; minutes)")
    q.add_argument("numbers", type=int, nargs="*", help="only these exercises")
    args = p.parse_args(argv)
    if args.command == "handout" and args.exercises == "1-99":
        args.exercises = f"1-{max(modules())}"
    if args.command == "selfcheck":
        sys.exit(selfcheck.main(args.numbers))
    globals()[f"command_{args.command}"](args)
