"""The worker's GIL switch interval: the base outside background work, at most 0.5 ms inside it (nested
and from several threads), back to the base when the last section ends."""

from __future__ import annotations

import sys
import threading

import pytest

from ctrops.serve import gil


@pytest.fixture(autouse=True)
def restore_interval():
    before = sys.getswitchinterval()
    yield
    gil.set_base(before)


def test_background_work_shortens_then_restores():
    gil.set_base(0.005)
    assert sys.getswitchinterval() == pytest.approx(0.005)
    with gil.background_work():
        assert sys.getswitchinterval() == pytest.approx(gil.RESPONSIVE)
        with gil.background_work():
            assert sys.getswitchinterval() == pytest.approx(gil.RESPONSIVE)
        assert sys.getswitchinterval() == pytest.approx(gil.RESPONSIVE)  # the outer section still runs
    assert sys.getswitchinterval() == pytest.approx(0.005)


def test_a_shorter_base_is_kept_inside():
    gil.set_base(0.0002)
    with gil.background_work():
        assert sys.getswitchinterval() == pytest.approx(0.0002)
    assert sys.getswitchinterval() == pytest.approx(0.0002)


def test_sections_from_several_threads_end_with_the_last():
    gil.set_base(0.005)
    entered, release = threading.Barrier(3), threading.Event()
    seen = []

    def work():
        with gil.background_work():
            entered.wait()
            release.wait()
        seen.append(sys.getswitchinterval())

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    entered.wait()
    assert sys.getswitchinterval() == pytest.approx(gil.RESPONSIVE)
    gil.set_base(0.004)  # a new base set meanwhile waits for the sections to end
    assert sys.getswitchinterval() == pytest.approx(gil.RESPONSIVE)
    release.set()
    for t in threads:
        t.join()
    assert sys.getswitchinterval() == pytest.approx(0.004)


def test_a_reload_runs_as_background_work(monkeypatch, tmp_path):
    """ServingLoader.reload holds the short interval while it loads (the watcher's thread)."""
    from ctrops.experiments.definition import ExperimentDefinition
    from ctrops.serve.loader import ModelStore, ServingLoader

    gil.set_base(0.005)
    seen = []

    def fake_reload_locked(self):
        seen.append(sys.getswitchinterval())
        raise RuntimeError("storage unreachable")

    monkeypatch.setattr(ServingLoader, "_reload_locked", fake_reload_locked)
    definition = ExperimentDefinition.single("production")
    loader = ServingLoader(ModelStore(str(tmp_path), "m", cache_dir=str(tmp_path)), lambda: definition)
    assert loader.reload().outcome == "failure"
    assert seen == [pytest.approx(gil.RESPONSIVE)]
    assert sys.getswitchinterval() == pytest.approx(0.005)
