"""The course: exercises on the real code, graded by tests (python -m course ...).

    python -m course list              the exercises in reading order, with their status here
    python -m course start 1           blank exercise 1 in this working tree (its functions raise NotImplementedError)
    python -m course check 1           grade it: one line per check, then a verdict (exit code 0 / 1)
    python -m course hint 1            the next hint
    python -m course reset 1           put the original code back (your version is kept in .course/backup)
    python -m course handout OUT --exercises 1-8    a copy with those exercises blanked, for a class
    python -m course selfcheck         prove every check able to fail (instructors, CI)

Files: grading.py (what an exercise is; runs the checks), blanks.py (blanking a function in place),
cli.py (the commands), selfcheck.py (the proofs), exercises/exNN_*.py (one exercise each: the task,
the blanks, hints, checks), planted/exNN_*.py (typical mistakes, and the projects' solutions; left out
of a handout), fixtures/ (small arrays some checks compare against).
"""
