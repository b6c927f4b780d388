"""docs/scenario-keys.md is what the specs generate: the documented keys, defaults and bounds
are the accepted ones."""

from pathlib import Path

from sextant.spec.reference import scenario_reference

DOC = Path(__file__).resolve().parents[1] / "docs" / "scenario-keys.md"


def test_the_key_reference_is_up_to_date():
    assert DOC.read_text() == scenario_reference(), "run: python scripts/write_scenario_reference.py"


def test_every_serving_section_and_its_bounds_are_listed():
    text = scenario_reference()
    for section in ("ServeWorkload", "Scheduler", "Deployment", "SLO", "Speculative", "Disaggregation",
                    "ServeOffload", "HardwareRef", "Strategy", "TrainWorkload", "ModelSpec"):
        assert f"### {section}\n" in text, section
    assert "| `num_layers` | int | required | > 0, <= 1,024 |" in text
    assert "| `iteration_overhead_ms` | float | none | >= 0, <= 1,000 |" in text
