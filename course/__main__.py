"""python -m course list | start N | check N | reset N | hint N | handout OUT --exercises 1-8 | selfcheck"""
from course.cli import main

main()
