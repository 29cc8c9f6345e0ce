"""Progress lines: rates, ETA, resumed runs, and how often they print."""

from __future__ import annotations

from pipeline.progress import Progress, format_duration


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_format_duration():
    assert [format_duration(s) for s in (0, 59.4, 61, 3600, 3725, -3)] == ["0s", "59s", "1m01s", "1h00m00s", "1h02m05s", "0s"]


def test_line_has_counts_rate_eta_and_failures():
    clock, lines = Clock(), []
    progress = Progress(total=100, interval=10, print_fn=lines.append, clock=clock)
    clock.now += 20
    assert progress.line(videos=25, frames=500, failed=2) == "[20s] 25/100 videos (25%), 25.0 frames/s, ETA 1m00s, 2 failed"
    assert progress.line(videos=0, frames=0, failed=0).endswith("ETA ?, 0 failed")  # no rate yet: no guess


def test_a_resumed_run_counts_earlier_videos_toward_the_total_but_not_the_rate():
    clock = Clock()
    progress = Progress(total=100, print_fn=lambda _: None, clock=clock, already_done=50)
    clock.now += 10
    # 10 videos in 10 s this run: 40 left at 1/s
    assert progress.line(60, 100, 0) == "[10s] 60/100 videos (60%), 10.0 frames/s, ETA 40s, 0 failed"
    resumed_whole = Progress(total=100, print_fn=lambda _: None, clock=clock, already_done=100)
    assert "ETA 0s" in resumed_whole.line(100, 0, 0)  # nothing left to do: no "?"


def test_update_prints_at_most_once_per_interval_unless_forced():
    clock, lines = Clock(), []
    progress = Progress(total=10, interval=5, print_fn=lines.append, clock=clock)
    assert progress.update(1, 10, 0)  # the first update prints
    clock.now += 2
    assert not progress.update(2, 20, 0)
    clock.now += 3
    assert progress.update(3, 30, 0)
    assert progress.update(3, 30, 0, force=True)
    assert len(lines) == 3 and lines[-1].startswith("[5s] 3/10 videos")
