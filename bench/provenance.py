"""Where a results file came from, and where it may go: the one helper for bench/run.py,
bench/batch_bench.py and scripts/soak.py.

Every results file records the git commit and whether the working tree was clean
(`git status --porcelain`, bench/results/ itself ignored), checked when the run starts and again
when it writes. Files under bench/results/ are what README quotes, so they are written only from a
clean tree: a dirty tree is refused at the start, with the changed files named, unless
--allow-dirty is given; then they go to bench/results/tmp/ (git-ignored) instead. A tree that
changes during the run also sends its files there. Paths outside bench/results/ are written as
given, with the same record.

    run = Provenance(allow_dirty=args.allow_dirty)      # refuses a dirty tree here, before the run
    path = run.target(RESULTS / "results.json")         # bench/results/... or bench/results/tmp/...
    ...
    results["provenance"] = run.record()                # the commit, clean at start and at end
    path = run.target(path)                             # re-checked: may move to tmp/ if the tree changed
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DIRTY_RESULTS = RESULTS / "tmp"  # git-ignored
SHOWN = 10  # changed files named in a refusal


def git_state(root: Path = ROOT) -> dict:
    """{"commit", "clean", "changed": ["XY path", ...]}; changes under bench/results/ do not count."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout

    top = Path(git("rev-parse", "--show-toplevel").strip())
    ignored = (root / "bench" / "results").resolve().relative_to(top.resolve()).as_posix() + "/"
    entries = git("status", "--porcelain=v1", "-z", "--untracked-files=all").split("\0")
    changed, skip_next = [], False
    for entry in entries:
        if skip_next or not entry:  # with -z, a rename or copy is followed by its source path
            skip_next = False
            continue
        status, path = entry[:2], entry[3:]
        skip_next = status[0] in "RC"
        if not path.startswith(ignored):
            changed.append(f"{status} {path}")
    return {"commit": git("rev-parse", "HEAD").strip(), "clean": not changed, "changed": changed}


class Provenance:
    """The tree's state for one run: refuses a dirty tree at the start unless allow_dirty."""

    def __init__(self, allow_dirty: bool = False, root: Path = ROOT, results: Path = RESULTS):
        self.allow_dirty, self.root, self.results = allow_dirty, root, results.resolve()
        self.start = git_state(root)
        self.end: dict | None = None
        if not self.start["clean"] and not allow_dirty:
            raise SystemExit(self.refusal(self.start))

    def refusal(self, state: dict) -> str:
        shown = ", ".join(state["changed"][:SHOWN]) + (", ..." if len(state["changed"]) > SHOWN else "")
        return (f"refusing to write results to {self.results.relative_to(self.root.resolve())}/ from a dirty working tree "
                f"({len(state['changed'])} changed: {shown}): README quotes these files, so they must come from a commit. "
                f"Commit the changes (or run from a clean checkout), or pass --allow-dirty to write to "
                f"{(self.results / 'tmp').relative_to(self.root.resolve())}/ instead.")

    def clean(self) -> bool:
        """Clean at the start and now, at the same commit (checks the tree again)."""
        self.end = git_state(self.root)
        return self.start["clean"] and self.end["clean"] and self.start["commit"] == self.end["commit"]

    def target(self, path: Path) -> Path:
        """Where a results file meant for `path` goes: a README-bound one (under bench/results/, not
        already in tmp/) moves to bench/results/tmp/ unless the tree is clean (checked now)."""
        path = Path(path).resolve()
        tmp = self.results / "tmp"
        if not path.is_relative_to(self.results) or path.is_relative_to(tmp) or self.clean():
            return path
        if not self.allow_dirty:  # clean at the start, changed during the run
            print(f"the working tree changed during the run ({', '.join(self.end['changed'][:SHOWN])}; commit "
                  f"{self.start['commit'][:12]} -> {self.end['commit'][:12]}): writing to {tmp} instead", file=sys.stderr)
        return tmp / path.relative_to(self.results)

    def record(self) -> dict:
        """For the results file: the commit, whether the tree was clean (at start and end), what differed."""
        clean = self.clean()
        changed = sorted(set(self.start["changed"]) | set(self.end["changed"]))
        return {"git_commit": self.start["commit"], "git_clean": clean,
                "git_commit_at_end": self.end["commit"] if self.end["commit"] != self.start["commit"] else None,
                "changed_files": changed, "checked": "git status --porcelain at the start and at the end, bench/results/ ignored",
                "allow_dirty": self.allow_dirty}
