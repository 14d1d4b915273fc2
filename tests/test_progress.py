import contextlib

from nerncompress.progress import offset, sequential_phases, silent


class Recorder:
    def __init__(self):
        self.events = []

    def log(self, message):
        self.events.append(("log", message))

    @contextlib.contextmanager
    def phase(self, name, total=None):
        self.events.append(("open", name, total))
        yield lambda step, phase_total, metrics: self.events.append(("step", name, step, phase_total))
        self.events.append(("close", name))


def test_sequential_phases_open_each_phase_at_its_first_step_and_close_the_one_before():
    reporter = Recorder()
    with sequential_phases(reporter) as phase:
        positions, steps = phase("positions"), phase("fit", 10)
        positions(0, 100, {})
        positions(100, 100, {})
        steps(1, 5, {"loss": 1.0})
        steps(5, 5, {})
    assert reporter.events == [
        ("open", "positions", 100), ("step", "positions", 0, 100), ("step", "positions", 100, 100),
        ("close", "positions"), ("open", "fit", 10), ("step", "fit", 1, 10), ("step", "fit", 5, 10), ("close", "fit"),
    ]  # fmt: skip


def test_a_phase_never_reported_is_never_opened():
    reporter = Recorder()
    with sequential_phases(reporter) as phase:
        phase("positions")
        phase("fit")(1, 2, {})
    assert [event[:2] for event in reporter.events] == [("open", "fit"), ("step", "fit"), ("close", "fit")]


def test_silent_and_offset():
    with silent.phase("x", 3) as on_step:
        on_step(1, 3, {})
    seen = []
    offset(lambda *args: seen.append(args), 10, 30)(2, 5, {})
    assert seen == [(12, 30, {})] and offset(None, 1) is None
