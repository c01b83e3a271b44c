"""``python -m study.run <study>``: not wired to Ray Tune yet (the study system is the next piece of work)."""

import sys

if __name__ == "__main__":
    sys.exit("study.run: the Ray Tune + MLflow study system is not implemented yet; see README 'Status'.")
