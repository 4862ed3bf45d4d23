"""The explorer's session copies (issue #30): at most max_sessions weight copies, the least
recently used dropped first, each dropped after idle_seconds unused (a fake clock here), a
request naming a dropped session told so and started again from the checkpoint, reset, and
the bound kept under concurrent use."""

import threading

import numpy as np
import pytest

from cnntrain.apps import explorer
from cnntrain.apps.committee import Committee
from cnntrain.apps.explorer import Explorer, SessionStore
from cnntrain.apps.inference import Predictor
from cnntrain.nn.model import build_network

SMALL = ["conv 2 3 stride=2", "relu", "maxpool 2", "flatten", "dense 10"]


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def store(max_sessions=3, idle=600.0):
    clock = FakeClock()
    return SessionStore(max_sessions=max_sessions, idle_seconds=idle, clock=clock), clock


def predictor(seed=0):
    network = build_network(SMALL, rng=np.random.default_rng(seed))
    return Predictor(network, mean=0.1307, std=0.3081)


def image(**extra):
    rng = np.random.default_rng(1)
    pixels = np.zeros((28, 28), dtype=np.int64)
    pixels[6:22, 10:18] = rng.integers(150, 256, (16, 8))
    return {"width": 28, "height": 28, "pixels": pixels.ravel().tolist(), **extra}


def test_the_least_recently_used_copy_is_dropped_first():
    sessions, clock = store(max_sessions=3)
    ids = []
    for _ in range(3):
        clock.now += 1
        ids.append(sessions.add(0, object()).id)
    assert len(set(ids)) == 3
    clock.now += 1
    assert sessions.get(ids[0], 0) is not None         # now the most recently used
    new = sessions.add(0, object()).id
    assert sessions.keys() == [(ids[2], 0), (ids[0], 0), (new, 0)]
    assert sessions.get(ids[1], 0) is None
    sessions.add(0, object())
    assert sessions.get(ids[2], 0) is None and len(sessions) == 3


def test_a_copy_unused_for_idle_seconds_expires_and_use_keeps_it():
    sessions, clock = store(idle=600)
    kept, left = sessions.add(0, object()).id, sessions.add(0, object()).id
    clock.now += 599
    assert sessions.get(kept, 0) is not None
    clock.now += 2                                     # left: 601 s unused, kept: 2 s
    assert sessions.get(left, 0) is None
    assert sessions.keys() == [(kept, 0)]
    clock.now += 600
    assert len(sessions) == 0 and sessions.get(kept, 0) is None


def test_the_bound_is_never_exceeded_by_any_sequence_of_requests():
    sessions, clock = store(max_sessions=4, idle=50)
    rng = np.random.default_rng(0)
    ids = []
    for _ in range(500):
        clock.now += float(rng.exponential(5))
        action = rng.integers(0, 3)
        if action == 0 or not ids:
            ids.append(sessions.add(int(rng.integers(0, 2)), object()).id)
        elif action == 1:
            sessions.get(ids[rng.integers(0, len(ids))], int(rng.integers(0, 2)))
        else:
            sessions.drop(ids[rng.integers(0, len(ids))])
        held = sessions.keys()
        assert len(held) <= 4
        assert all(clock.now - sessions.get(*key).last_used <= 50 for key in held)


def test_the_bound_holds_under_concurrent_use():
    sessions = SessionStore(max_sessions=5)
    failures = []

    def client():
        for _ in range(200):
            copy = sessions.add(0, object())
            sessions.get(copy.id, 0)
            if len(sessions) > 5:
                failures.append(len(sessions))

    threads = [threading.Thread(target=client) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures and len(sessions) == 5


def test_drop_removes_every_copy_of_a_session():
    sessions, _ = store(max_sessions=4)
    first = sessions.add(0, object()).id
    sessions.add(1, object(), first)
    other = sessions.add(0, object()).id
    assert sessions.holds(first) and sessions.drop(first) == 2
    assert not sessions.holds(first) and sessions.keys() == [(other, 0)]
    assert sessions.drop(first) == 0


def test_a_store_must_hold_at_least_one_copy():
    with pytest.raises(ValueError, match="max_sessions"):
        SessionStore(max_sessions=0)


# ---- through the explorer


def explorer_with(model, max_sessions=2, idle=600.0):
    sessions, clock = store(max_sessions=max_sessions, idle=idle)
    return Explorer(model, sessions), clock


def test_an_expired_session_is_said_dropped_and_starts_again_from_the_checkpoint():
    served = predictor()
    api, clock = explorer_with(served, idle=600)
    checkpoint = api.explain(image(target=4))
    first = api.step(image(target=4, lr=0.01))
    session = first["session"]["id"]
    second = api.step(image(target=4, lr=0.01, session=session))
    assert second["session"] == {"id": session, "steps": 2, "dropped": False}
    explained = api.explain(image(target=4, session=session))
    np.testing.assert_allclose(explained["probabilities"], second["after"], rtol=1e-5)
    assert not np.allclose(explained["probabilities"], checkpoint["probabilities"])

    clock.now += 601
    gone = api.explain(image(target=4, session=session))
    assert gone["session"] == {"id": None, "steps": 0, "dropped": True}
    np.testing.assert_array_equal(gone["probabilities"], checkpoint["probabilities"])
    again = api.step(image(target=4, lr=0.01, session=session))
    assert again["session"]["dropped"] is True and again["session"]["steps"] == 1
    assert again["session"]["id"] != session
    np.testing.assert_allclose(again["before"], checkpoint["probabilities"], rtol=1e-6)
    np.testing.assert_allclose(again["after"], first["after"], rtol=1e-6)


def test_reset_drops_the_copy_and_the_served_network_never_moves():
    served = predictor()
    weights = {name: value.copy() for name, value in served.network.params.items()}
    api, _ = explorer_with(served)
    session = api.step(image(target=2, lr=0.01))["session"]["id"]
    api.step(image(target=2, lr=0.01, session=session))
    for name, value in served.network.params.items():
        np.testing.assert_array_equal(value, weights[name], err_msg=name)
    assert api.reset({"session": session}) == {
        "session": {"id": None, "steps": 0, "dropped": False}}
    assert len(api.sessions) == 0
    assert api.reset({"session": session})["session"]["dropped"] is True


def test_each_member_of_a_committee_gets_its_own_copy_under_one_session():
    committee = Committee([predictor(0), predictor(1)], names=["a", "b"])
    api, _ = explorer_with(committee, max_sessions=4)
    step0 = api.step(image(target=6, lr=0.01))
    session = step0["session"]["id"]
    # Member 1 has no copy yet: its checkpoint's weights, under the same session, not dropped.
    plain1 = api.explain(image(target=6, member=1, session=session))
    assert plain1["session"] == {"id": session, "steps": 0, "dropped": False}
    step1 = api.step(image(target=6, lr=0.01, member=1, session=session))
    assert step1["session"] == {"id": session, "steps": 1, "dropped": False}
    np.testing.assert_allclose(step1["before"], plain1["probabilities"], rtol=1e-5)
    assert sorted(api.sessions.keys()) == sorted([(session, 0), (session, 1)])
    seen0 = api.explain(image(target=6, member=0, session=session))
    np.testing.assert_allclose(seen0["probabilities"], step0["after"], rtol=1e-5)
    with pytest.raises(explorer.RequestError, match="'member'"):
        api.explain(image(target=6, member=2))
    api.reset({"session": session})
    assert len(api.sessions) == 0


def test_session_ids_are_random_and_url_safe():
    sessions, _ = store(max_sessions=50)
    ids = {sessions.add(0, object()).id for _ in range(50)}
    assert len(ids) == 50
    assert all(explorer.SESSION_ID.match(session) and len(session) >= 20 for session in ids)


def test_at_most_busy_explain_and_step_requests_compute_at_once(monkeypatch):
    """So the copies alive stay under MAX_SESSIONS + busy, however many clients step."""
    api = Explorer(predictor(), busy=2)
    inside, peak, lock = [0], [0], threading.Lock()
    step = api.step

    def counted(request):
        with lock:
            inside[0] += 1
            peak[0] = max(peak[0], inside[0])
        try:
            threading.Event().wait(0.02)   # long enough for the other clients to arrive
            return step(request)
        finally:
            with lock:
                inside[0] -= 1

    monkeypatch.setattr(api, "step", counted)
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(
        api.answer("/api/step", image(target=1, lr=0.01)))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(answers) == 8 and 1 <= peak[0] <= 2


def test_a_model_without_networks_is_refused_with_a_404_not_a_crash():
    class Stub:
        def probabilities(self, fields):
            return np.full((len(fields), 10), 0.1)

    with pytest.raises(explorer.RequestError, match="no network") as raised:
        Explorer(Stub()).answer("/api/explain", image(target=1))
    assert raised.value.status == 404
