"""Write docs/scenario-keys.md from the specs (sextant.spec.reference)."""

from pathlib import Path

from sextant.spec.reference import scenario_reference

path = Path(__file__).resolve().parents[1] / "docs" / "scenario-keys.md"
path.write_text(scenario_reference())
print(f"wrote {path}")
