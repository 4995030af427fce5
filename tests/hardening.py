"""The hardening section of make test (tests/run.py calls hardening()).

Three runs over lib/, each a make target so it can be repeated by hand:

  make fuzz           the libFuzzer targets in tests/fuzz, FUZZ_SECONDS
                      (default 20) each, seeded from tests/fuzz/corpus
  make asan-unit      the cmocka unit tests built with ASan+UBSan
  make valgrind-unit  the ordinary unit binaries under valgrind

Each prints one line per fuzz target or unit binary ("fuzz NAME: N runs,
no crash", "asan NAME: ok", "valgrind NAME: FAILED, see LOG"); each line
becomes one result.  Builds are make's, under build/, so a second run only
runs.  A target that fails to build, or fails without saying which binary,
is a failure of its own.
"""
import concurrent.futures
import os
import re
import subprocess

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LINE = re.compile(r"^(fuzz|asan|valgrind) (\S+): (.*)$")
# What in a failing log says why: sanitizer and libFuzzer reports, broken
# invariants (tests/fuzz/fuzz.h), valgrind's findings, cmocka's failures.
WHY = re.compile(r"ERROR:|runtime error:|invariant broken|SUMMARY:|Test unit written|"
                 r"definitely lost|Invalid (read|write)|uninitialised|\[  (FAILED|ERROR) ")

# Seconds make may take per target, builds included (a cold clang build of
# lib/ is about a minute on the 2-core test machine).
TIMEOUTS = {"fuzz": 900, "asan-unit": 600, "valgrind-unit": 600}


def _why(log):
    """The lines of a failing run's log that explain it, else its tail."""
    try:
        with open(os.path.join(TOP, log), errors="replace") as f:
            text = f.read()
    except OSError as e:
        return f"no log {log}: {e}"
    lines = [line for line in text.splitlines() if WHY.search(line)]
    return "\n".join(lines[:30]) if lines else text[-2000:]


def hardening(tmp, record, nice=0):
    """Build and run the fuzzers, the ASan unit tests and valgrind (at
    nice's priority, when other tests run meanwhile)."""
    # The unit tests make their folders under TMPDIR; run.py removes tmp.
    os.makedirs(f"{tmp}/hardening", exist_ok=True)
    env = dict(os.environ, TMPDIR=f"{tmp}/hardening")
    # Bounded for CI's time budget (make fuzz alone defaults to 20 s).
    env.setdefault("FUZZ_SECONDS", "10")
    targets = ("fuzz", "asan-unit", "valgrind-unit")

    def run(target):
        try:
            return subprocess.run(["nice", "-n", str(nice), "make", "-s", "--no-print-directory",
                                   "-C", TOP, target], env=env, capture_output=True, text=True,
                                  timeout=TIMEOUTS[target])
        except subprocess.TimeoutExpired:
            return None

    # The three at once: each runs its binaries one at a time (a fuzzer
    # for its seconds, valgrind's single thread), 420 s in a row in CI;
    # their builds are of separate objects.
    with concurrent.futures.ThreadPoolExecutor(len(targets)) as pool:
        done = dict(zip(targets, pool.map(run, targets)))
    for target in targets:
        p = done[target]
        if p is None:
            record(f"make {target}: finished in time", False,
                   f"timed out after {TIMEOUTS[target]} s")
            continue
        failed_lines = 0
        seen = 0
        for line in p.stdout.splitlines():
            m = LINE.match(line)
            if not m:
                continue
            seen += 1
            kind, name, outcome = m.groups()
            ok = not outcome.startswith("FAILED")
            if kind == "fuzz":
                # The execution count is part of the name: the proof it ran.
                title = f"fuzz {name}: {outcome}" if ok else f"fuzz {name}: no crash"
            else:
                title = f"{kind} unit {name}"
            detail = ""
            if not ok:
                failed_lines += 1
                log = outcome.rsplit("see ", 1)[-1]
                detail = f"{outcome}\n{_why(log)}"
            record(title, ok, detail)
        if seen == 0 or (p.returncode != 0 and failed_lines == 0):
            record(f"make {target}", False,
                   f"exit {p.returncode}\n{p.stdout[-1500:]}{p.stderr[-2500:]}")
