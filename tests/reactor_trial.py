"""Runs Twisted's reactor conformance suites against GeventReactor, in a process of its own.

    python -m tests.reactor_trial WORKDIR twisted.internet.test.test_tcp ...

Like `twistd rpcd`, it imports Twisted first, then patches with gevent and installs the
gevent-hosted reactor as the global reactor. It points Twisted's `ReactorBuilder` at
GeventReactor alone, marks the tests that cannot apply as skipped (reasons in SKIPS), runs
the modules with trial's runner and prints one last line: `COUNTS {json}` with the test
ids per outcome, split into the GeventReactor cases and the rest of those modules.
"""

from __future__ import annotations

import importlib
import json
import sys
import unittest

import gevent

from rpcd import reactor as rpcd_reactor

GEVENT_REACTOR = "rpcd.reactor.GeventReactor"

# Tests that cannot apply to the gevent-hosted reactor: "Class.test_name" -> why. A class
# name also matches the cases ReactorBuilder generates from it ("Class_GeventReactorTests").
_DEFERRED_CLOSE = (
    "tests Twisted's fd-exhausting test helper, not a reactor: gevent's patched os.close "
    "(gevent >= 25.8.1) closes a descriptor on the hub's next loop iteration, which a "
    "synchronous test never runs, so release() cannot free descriptors at once"
)
_CONNECT_EX = (
    "asserts CPython's exact OverflowError text 'connect(): port must be 0-65535.'; gevent's "
    "patched socket.connect goes through connect_ex, so the same OverflowError says connect_ex()"
)
SKIPS: dict[str, str] = {
    **{
        f"ExhaustsFileDescriptorsTests.{name}": _DEFERRED_CLOSE
        for name in (
            "test_count",
            "test_exhaustTriggersEMFILE",
            "test_release",
            "test_fileDescriptorsReleasedOnFailure",
            "test_releaseIgnoresEBADF",
        )
    },
    "TCP4ClientTestsBuilder.test_connectPortOverflow": _CONNECT_EX,
    "TCP4ClientTestsBuilder.test_connectPortUnderflow": _CONNECT_EX,
    "TCP6ClientTestsBuilder.test_connectPortOverflow": _CONNECT_EX,
    "UNIXTestsBuilder.test_avoidLeakingFileDescriptors": (
        "Twisted closes the unwanted received descriptor with os.close, which gevent defers to "
        "the hub's next loop iteration; the test looks right after the reactor stopped, before it"
    ),
}


def _apply_skips(module) -> None:
    for key, reason in SKIPS.items():
        name, test = key.split(".")
        for case in vars(module).values():
            if not isinstance(case, type) or not hasattr(case, test):
                continue
            if case.__name__ == name or case.__name__.startswith(name + "_"):
                setattr(case, test, _skipped(getattr(case, test), reason))


def _skipped(test, reason: str):
    def skipped(self):
        return test(self)

    skipped.skip = reason
    skipped.__doc__ = test.__doc__
    return skipped


def main(workdir: str, module_names: list[str]) -> None:
    rpcd_reactor.install(patch=True)
    from twisted.internet.test.reactormixins import ReactorBuilder
    from twisted.trial import reporter, runner

    ReactorBuilder._reactors = [GEVENT_REACTOR]
    outcomes: dict[str, list[str]] = {
        "successes": [],
        "skips": [],
        "failures": [],
        "errors": [],
        "expectedFailures": [],
        "unexpectedSuccesses": [],
    }

    class Recorder(reporter.TreeReporter):
        def stopTest(self, test):
            # A gevent program's hub loop runs all the time; between synchronous tests only
            # this gives it a turn, to finish the descriptor closes gevent defers to it.
            gevent.idle()
            super().stopTest(test)

        def addSuccess(self, test):
            outcomes["successes"].append(test.id())
            super().addSuccess(test)

        def addSkip(self, test, reason):
            outcomes["skips"].append(test.id())
            super().addSkip(test, reason)

        def addFailure(self, test, fail):
            outcomes["failures"].append(test.id())
            super().addFailure(test, fail)

        def addError(self, test, error):
            outcomes["errors"].append(test.id())
            super().addError(test, error)

        def addExpectedFailure(self, test, failure, todo=None):
            outcomes["expectedFailures"].append(test.id())
            super().addExpectedFailure(test, failure, todo)

        def addUnexpectedSuccess(self, test, todo=None):
            outcomes["unexpectedSuccesses"].append(test.id())
            super().addUnexpectedSuccess(test, todo)

    loader = runner.TestLoader()
    suites = []
    for name in module_names:
        module = importlib.import_module(name)
        _apply_skips(module)
        # Not loader.loadModule: it probes every module global with issubclass(), and a closed
        # gevent socket that test_tcp keeps at module level raises EBADF on that probe.
        for case in vars(module).values():
            if isinstance(case, type) and issubclass(case, unittest.TestCase):
                suites.append(loader.loadClass(case))
    trial = runner.TrialRunner(Recorder, stream=sys.stderr, workingDirectory=workdir)
    trial.run(runner.TestSuite(suites))
    counts = {
        group: {
            outcome: sum(1 for tid in ids if ("GeventReactor" in tid) == (group == "gevent"))
            for outcome, ids in outcomes.items()
        }
        for group in ("gevent", "other")
    }
    failed = [tid for key in ("failures", "errors", "unexpectedSuccesses") for tid in outcomes[key]]
    report = {"counts": counts, "failed": failed, "skipped": outcomes["skips"]}
    sys.stdout.write("COUNTS " + json.dumps(report) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
