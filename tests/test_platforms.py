"""Platform choice by measurement: precedence, the timed choice on alanine dipeptide, the cache."""

import copy

import openmm
import pytest

from openmm_flowplugin import platforms, systems
from openmm_flowplugin.platforms import (
    PLATFORM_ENV_VAR,
    REFERENCE_MAX_PARTICLES,
    platform_choice,
    select_platform,
)


@pytest.fixture(autouse=True)
def fresh_cache(monkeypatch):
    """A clean cache, and the platforms of a CPU machine (GPU choices: tests/test_cuda.py and the fakes below)."""
    monkeypatch.delenv(PLATFORM_ENV_VAR, raising=False)
    available = platforms._available_platforms() & {"Reference", "CPU"}
    monkeypatch.setattr(platforms, "_available_platforms", lambda: available)
    platforms.clear_platform_cache()
    yield
    platforms.clear_platform_cache()


@pytest.fixture(scope="module")
def vacuum():
    return systems.get("alanine_dipeptide_vacuum")


@pytest.fixture(scope="module")
def implicit():
    return systems.get("alanine_dipeptide_implicit")


@pytest.fixture
def timing_calls(monkeypatch):
    """Count the candidates timed (the real timings)."""
    calls = []
    real = platforms._timer

    def counted(system, name, purpose, positions):
        calls.append((name, purpose))
        return real(system, name, purpose, positions)

    monkeypatch.setattr(platforms, "_timer", counted)
    return calls


def _fake_timings(monkeypatch, seconds):
    monkeypatch.setattr(platforms, "_timer", lambda system, name, purpose, positions: lambda: seconds[name])


@pytest.mark.parametrize("purpose", ["md", "energy"])
def test_vacuum_alanine_dipeptide_runs_on_reference(vacuum, purpose):
    choice = platform_choice(vacuum.system, purpose=purpose)
    # Measured ~10-40x apart: an assertion failure here is a real inversion on this machine, shown by the timings.
    assert choice.timings["Reference"] < choice.timings["CPU"], choice.reason
    assert choice.name == "Reference", choice.reason
    assert select_platform(vacuum.system, purpose=purpose).getName() == "Reference"


@pytest.mark.parametrize("purpose", ["md", "energy"])
def test_implicit_alanine_dipeptide_does_not_run_on_reference(implicit, purpose):
    choice = platform_choice(implicit.system, purpose=purpose, positions=implicit.positions)
    assert choice.timings["CPU"] < choice.timings["Reference"], choice.reason
    assert choice.name == "CPU", choice.reason
    assert 0 < choice.cost < 2.0  # ~0.3 s on 2 cores


def test_the_faster_timing_wins(vacuum, monkeypatch):
    _fake_timings(monkeypatch, {"Reference": 2e-3, "CPU": 1e-3})
    assert platform_choice(vacuum.system).name == "CPU"
    platforms.clear_platform_cache()
    _fake_timings(monkeypatch, {"Reference": 1e-3, "CPU": 2e-3})
    choice = platform_choice(vacuum.system)
    assert choice.name == "Reference"
    assert choice.timings == {"Reference": 1e-3, "CPU": 2e-3}
    assert "Reference 1 ms/step, CPU 2 ms/step" in choice.reason


@pytest.mark.parametrize("when", ["set-up", "timing"])
def test_a_failing_candidate_is_skipped_and_reported(vacuum, monkeypatch, when):
    def failing_block():
        raise openmm.OpenMMException("no kernel for this force")

    def timer(system, name, purpose, positions):
        if name == "Reference":
            if when == "set-up":
                failing_block()
            return failing_block
        return lambda: 1e-3

    monkeypatch.setattr(platforms, "_timer", timer)
    choice = platform_choice(vacuum.system, purpose="energy")
    assert choice.name == "CPU"
    assert choice.timings == {"Reference": float("inf"), "CPU": 1e-3}
    assert "failed: Reference: no kernel for this force" in choice.reason


def test_cache_hit_does_not_time_again(vacuum, timing_calls):
    first = select_platform(vacuum.system, purpose="energy")
    assert sorted(timing_calls) == [("CPU", "energy"), ("Reference", "energy")]
    assert select_platform(vacuum.system, purpose="energy").getName() == first.getName()
    assert select_platform(copy.deepcopy(vacuum.system), purpose="energy").getName() == first.getName()  # same XML
    assert len(timing_calls) == 2
    select_platform(vacuum.system, purpose="md")  # another purpose is timed on its own
    assert len(timing_calls) == 4


def test_a_changed_system_is_timed_again(vacuum, timing_calls):
    system = copy.deepcopy(vacuum.system)
    select_platform(system)
    system.addForce(openmm.CMMotionRemover())
    select_platform(system)
    assert len(timing_calls) == 4


def test_argument_beats_environment_beats_automatic(vacuum, monkeypatch, timing_calls):
    monkeypatch.setenv(PLATFORM_ENV_VAR, "CPU")
    assert select_platform(vacuum.system).getName() == "CPU"
    assert platform_choice(vacuum.system).reason == f"environment variable {PLATFORM_ENV_VAR}=CPU"
    assert select_platform(vacuum.system, "Reference").getName() == "Reference"
    assert select_platform(platform="Reference").getName() == "Reference"
    given = openmm.Platform.getPlatformByName("CPU")
    assert select_platform(vacuum.system, given) is given
    assert timing_calls == []


@pytest.mark.parametrize("where", ["argument", "environment"])
def test_unavailable_platform_is_a_clear_error(vacuum, monkeypatch, where):
    kwargs = {"platform": "NoSuchPlatform"} if where == "argument" else {}
    if where == "environment":
        monkeypatch.setenv(PLATFORM_ENV_VAR, "NoSuchPlatform")
    with pytest.raises(ValueError, match=r"'NoSuchPlatform' is not available here \(available: .*'Reference'"):
        select_platform(vacuum.system, **kwargs)


def test_bad_purpose_system_and_positions_are_refused(vacuum):
    with pytest.raises(ValueError, match="purpose must be one of"):
        select_platform(vacuum.system, purpose="sampling")
    with pytest.raises(TypeError, match=r"system must be an openmm.System \(pass its .system\), got MolecularSystem"):
        select_platform(vacuum)
    with pytest.raises(ValueError, match="positions has 3 atoms but the system has 22"):
        select_platform(vacuum.system, positions=[[0.0, 0.0, 0.0]] * 3)


def test_large_systems_go_to_cpu_untimed(timing_calls):
    system = openmm.System()
    for _ in range(REFERENCE_MAX_PARTICLES + 1):
        system.addParticle(1.0)
    choice = platform_choice(system)
    assert choice.name == "CPU" and choice.timings == {} and timing_calls == []


def test_without_the_cpu_platform_reference_is_taken_untimed(vacuum, monkeypatch, timing_calls):
    monkeypatch.setattr(platforms, "_available_platforms", lambda: {"Reference"})
    assert platform_choice(vacuum.system).name == "Reference" and timing_calls == []


def test_a_gpu_platform_is_taken_untimed_for_large_systems(monkeypatch, timing_calls):
    system = openmm.System()
    for _ in range(REFERENCE_MAX_PARTICLES + 1):
        system.addParticle(1.0)
    monkeypatch.setattr(platforms, "_available_platforms", lambda: {"Reference", "CPU", "OpenCL", "CUDA"})
    assert platform_choice(system).name == "CUDA"
    monkeypatch.setattr(platforms, "_available_platforms", lambda: {"Reference", "CPU", "OpenCL"})
    assert platform_choice(system).name == "OpenCL"
    assert platform_choice(None).name == "OpenCL"
    assert timing_calls == []


def test_a_gpu_platform_is_timed_against_reference_and_cpu_for_small_systems(vacuum, monkeypatch):
    """On an H200, alanine dipeptide in vacuum ran twice as fast on Reference as on CUDA: small systems are timed."""
    monkeypatch.setattr(platforms, "_available_platforms", lambda: {"Reference", "CPU", "CUDA"})
    _fake_timings(monkeypatch, {"Reference": 2e-4, "CPU": 5e-3, "CUDA": 4e-4})
    choice = platform_choice(vacuum.system, purpose="energy")
    assert choice.name == "Reference" and sorted(choice.timings) == ["CPU", "CUDA", "Reference"]
    platforms.clear_platform_cache()
    _fake_timings(monkeypatch, {"Reference": 2e-3, "CPU": 1e-3, "CUDA": 1e-4})
    assert platform_choice(vacuum.system, purpose="energy").name == "CUDA"


def test_a_system_that_cannot_be_serialized_is_cached_for_itself_only(vacuum, monkeypatch, timing_calls):
    def refuse(system):
        raise TypeError("cannot pickle this force")

    monkeypatch.setattr(openmm.XmlSerializer, "serialize", refuse)
    first, second = copy.deepcopy(vacuum.system), copy.deepcopy(vacuum.system)
    select_platform(first)
    select_platform(first)
    assert len(timing_calls) == 2
    select_platform(second)
    assert len(timing_calls) == 4
