"""The instructor's side of each exercise: its typical mistakes as planted wrong solutions (MISTAKES), and
a project's reference solution (SOLUTION). Left out of a handout: they quote the answers."""
