from whisper_endpoint.engines.base import Cancellation, on_cancel


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


def test_on_cancel_watches_only_while_its_block_runs() -> None:
    cancellation, ran = Cancellation(), []
    with on_cancel(cancellation, lambda: ran.append("inside")):
        cancellation.set()
    assert ran == ["inside"]
    later = Cancellation()
    with on_cancel(later, lambda: ran.append("after")):
        pass
    later.set()
    with on_cancel(None, lambda: ran.append("none")):
        pass
    assert ran == ["inside"]
