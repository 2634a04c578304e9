"""The course: every exercise blanks what exists and has hints and planted mistakes (here); the commands
on a copy of the repository, start blanks, check grades, reset restores, a handout leaves the planted
mistakes out (marked slow: each command starts a Python with torch; CI runs them). That every check
can fail, for the right reason, is `python -m course selfcheck`, which CI runs too."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from course import blanks
from course.grading import modules, planted

ROOT = Path(__file__).resolve().parents[1]
EXERCISES = modules()


def test_the_exercises_are_numbered_in_order_and_cover_the_reading_order():
    assert sorted(EXERCISES) == list(range(1, len(EXERCISES) + 1))
    exercises = [m.EXERCISE for m in EXERCISES.values()]
    assert sum(not e.project for e in exercises) >= 15 and sum(bool(e.project) for e in exercises) >= 3
    sections = " ".join(e.section for e in exercises)
    for section in ("§2.1", "§2.2", "§2.3", "§2.4", "§3", "§4.1"):
        assert section in sections, section


@pytest.mark.parametrize("number", sorted(EXERCISES))
def test_every_exercise_blanks_what_exists_and_has_hints_and_planted_mistakes(number):
    e = EXERCISES[number].EXERCISE
    assert e.hints and (e.blanks or (e.project and "NotImplementedError" in e.template))
    for file, name in e.blanks:
        source = (ROOT / file).read_text()
        blanked = blanks.blank(source, name, number, file)
        assert not blanks.is_blank(source, name) and blanks.is_blank(blanked, name)
        compile(blanked, file, "exec")  # still a valid module
        assert blanks.replace_function(blanked, name, blanks.function_source(source, name)) == source
    mistakes = planted(number).MISTAKES
    assert mistakes and all(m.says and m.original != m.planted for m in mistakes)


def course(copy, *args):
    return subprocess.run([sys.executable, "-m", "course", *args], cwd=copy, capture_output=True, text=True)


@pytest.fixture(scope="module")
def copy(tmp_path_factory):
    """The repository's files in a temporary folder (no .git: the commit check is skipped there)."""
    copy = tmp_path_factory.mktemp("course") / "repo"
    for file in subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.splitlines():
        if (ROOT / file).is_file() and not file.startswith(".course/"):
            (copy / file).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / file, copy / file)
    return copy


@pytest.mark.slow
def test_start_check_hint_reset_round_trip(copy):
    original = (copy / "rvq.py").read_text()
    assert "untouched" in course(copy, "list").stdout.splitlines()[0]
    started = course(copy, "start", "1")
    assert started.returncode == 0 and "NotImplementedError(\"exercise 1" in (copy / "rvq.py").read_text()
    again = course(copy, "start", "1")
    assert again.returncode == 2 and "already started" in again.stderr
    checked = course(copy, "check", "1")
    assert checked.returncode == 1 and "TODO" in checked.stdout and "checks fail" in checked.stdout
    assert "[blank]" in course(copy, "list").stdout.splitlines()[0]
    hints = [course(copy, "hint", "1").stdout for _ in range(2)]
    assert hints[0].startswith("hint 1 of") and hints[1].startswith("hint 2 of")
    (copy / "rvq.py").write_text((copy / "rvq.py").read_text().replace(
        'raise NotImplementedError("exercise 1: write VectorQuantizer.assign (rvq.py); hint: python -m course hint 1")',
        "return torch.cdist(x, self.codebook).argmin(dim=1)"))  # a student's (correct) answer
    assert course(copy, "check", "1").returncode == 0
    assert "[solved]" in course(copy, "list").stdout.splitlines()[0]
    reset = course(copy, "reset", "1")
    assert reset.returncode == 0 and (copy / "rvq.py").read_text() == original
    backups = list((copy / ".course" / "backup").rglob("rvq.py"))
    assert backups and "torch.cdist" in backups[0].read_text()  # the student's answer is kept
    assert course(copy, "reset", "1").returncode == 2


@pytest.mark.slow
def test_a_project_starts_from_its_template(copy):
    e = EXERCISES[21].EXERCISE
    assert course(copy, "start", "21").returncode == 0 and (copy / e.project).read_text() == e.template
    assert course(copy, "check", "21").returncode == 1
    assert course(copy, "reset", "21").returncode == 0 and not (copy / e.project).exists()


@pytest.mark.slow
def test_bad_numbers_are_one_line_and_exit_code_2(copy):
    for args in (["start", "99"], ["check", "0"], ["handout", str(copy / "h"), "--exercises", "x-y"]):
        result = course(copy, *args)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)


@pytest.mark.slow
def test_a_handout_is_blanked_and_has_no_planted_mistakes(copy, tmp_path):
    out = tmp_path / "handout"
    result = course(copy, "handout", str(out), "--exercises", "1,3-4")
    assert result.returncode == 0, result.stderr
    assert not (out / "course" / "planted").exists() and (out / "course" / "exercises").is_dir()
    rvq_source = (out / "rvq.py").read_text()
    for name in ("VectorQuantizer.assign", "ResidualVectorQuantizer.encode", "VectorQuantizer.ema_update"):
        assert blanks.is_blank(rvq_source, name)
    assert not blanks.is_blank(rvq_source, "VectorQuantizer.revive_dead_codes")  # exercise 5 not handed out
    checked = course(out, "check", "1")
    assert checked.returncode == 1 and "TODO" in checked.stdout
    assert course(out, "selfcheck").returncode == 2  # the instructor's proof needs course/planted
