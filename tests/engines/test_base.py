from whisper_endpoint.engines.base import Cancellation


def test_a_cancellation_runs_each_callback_once_and_late_ones_at_once() -> None:
    cancellation, ran = Cancellation(), []
    cancellation.on_set(lambda: ran.append("first"))
    forget = cancellation.on_set(lambda: ran.append("forgotten"))
    forget()
    assert not cancellation.is_set() and ran == []
    cancellation.set()
    cancellation.set()
    assert cancellation.is_set() and ran == ["first"]
    cancellation.on_set(lambda: ran.append("late"))
    assert ran == ["first", "late"]
