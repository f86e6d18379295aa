"""In-process stand-ins for actor handles (actors/local.py): calls run when resolved, once, in
the order resolved; the driver's ``get`` works on one call or a list."""

from actors.local import LocalHandle, local_get


class Counter:
    def __init__(self):
        self.calls: list[str] = []

    def add(self, name: str, n: int = 1) -> int:
        self.calls.append(name)
        return len(self.calls) * n


def test_calls_run_when_resolved_and_only_once():
    obj = Counter()
    h = LocalHandle(obj)
    first, second = h.add.remote("a"), h.add.remote("b", n=10)
    assert obj.calls == []  # nothing ran yet: like an ObjectRef, the result is pending
    assert local_get(second) == 10 and obj.calls == ["b"]
    assert local_get([first, second]) == [2, 10]  # `second` is not run again
    assert obj.calls == ["b", "a"]


def test_missing_methods_fail_like_attributes():
    h = LocalHandle(Counter())
    try:
        h.nope.remote()
    except AttributeError as exc:
        assert "nope" in str(exc)
    else:
        raise AssertionError("expected AttributeError")
