"""The library reports through events: the loop emits them, any sink subscribes, the
library itself prints nothing."""

import logging

from swamp.events import (Events, Info, LevelFinished, LevelStarted, ParticleProgress,
                          RunFinished, RunStarted, log_events)
from swamp.loop import run


def test_subscribers_get_every_event_until_they_unsubscribe():
    events = Events()
    events.emit(Info("nobody listens"))   # no subscriber: nothing happens
    seen, also = [], []
    unsubscribe = events.subscribe(seen.append)
    events.subscribe(also.append)
    events.info("one")
    unsubscribe()
    unsubscribe()                          # a second call is harmless
    events.emit(Info("two"))
    assert seen == [Info("one")] and also == [Info("one"), Info("two")]


def test_a_run_emits_its_events_in_order_and_prints_nothing(tiny, capsys):
    events = Events()
    seen = []
    events.subscribe(seen.append)
    result = run(tiny(levels=1, particles=2), events=events)
    assert capsys.readouterr() == ("", "")
    kinds = [type(e) for e in seen if not isinstance(e, (Info, ParticleProgress))]
    assert kinds == [RunStarted, LevelStarted, LevelFinished, LevelStarted, LevelFinished,
                     RunFinished]
    started = seen[[type(e) for e in seen].index(RunStarted)]
    assert started.run_dir == result.run_dir and started.method == "swamp"
    assert started.particles == 2 and started.levels == 1 and started.device == "cpu"
    level = next(e for e in seen if isinstance(e, LevelStarted))
    progress = [e for e in seen if isinstance(e, ParticleProgress) and e.level == 0]
    assert {e.index for e in progress} == {0, 1}
    assert max(e.iteration for e in progress) == level.last_iteration
    assert [e.row for e in seen if isinstance(e, LevelFinished)] == result.levels
    assert seen[-1] == RunFinished(result.run_dir, result.levels)


def test_a_resumed_run_reports_its_finished_levels_again(tiny):
    settings = tiny(levels=1, particles=1, method="imp")
    first = run(settings)
    seen = []
    events = Events()
    events.subscribe(seen.append)
    run(settings, events=events)
    finished = [e.row for e in seen if isinstance(e, LevelFinished)]
    assert [(r["level"], r["test_acc"]) for r in finished] == \
        [(r["level"], r["test_acc"]) for r in first.levels]
    assert not any(isinstance(e, LevelStarted) for e in seen)
    assert any(isinstance(e, Info) and e.message.startswith("resuming") for e in seen)


def test_log_events_writes_one_line_per_event_but_progress(tiny, caplog):
    events = Events()
    unsubscribe = log_events(events, logging.getLogger("swamp.test"))
    with caplog.at_level(logging.INFO, logger="swamp.test"):
        run(tiny(levels=0, particles=1, method="imp"), events=events)
        unsubscribe()
        events.info("after unsubscribing")
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("run ") and "imp, mlp on synthetic" in lines[0]
    assert any(line.startswith("level 0: 1 particle(s), iterations 0..") for line in lines)
    assert any(line.startswith("level 0 finished: density 1.0000") for line in lines)
    assert lines[-1].endswith("finished: 1 level(s)")
    assert "after unsubscribing" not in lines
