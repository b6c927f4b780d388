"""Fit the serving engines' KV-sizing parameters to the engines' logged KV capacity.

    python scripts/fit_kv_capacity.py           # print the fit, leave-one-source-out, per row
    python scripts/fit_kv_capacity.py --check   # exit 1 if the presets differ from the fit

The data: src/sextant/validate/data/kv-capacity.yaml (vLLM's and SGLang's startup logs). Global
to an engine preset (serving_frameworks.yaml), never per row: the runtime held outside PyTorch
before the cache is sized where the logs do not print it (vllm-2024: rows KV1 and KV3; sglang-2025:
KV13-KV16), and the bytes per logit of vLLM v0.11's dummy sampler run (vllm-v1-0.11: KV8-KV12;
vllm-v1-2025, v0.8-v0.10, counts the fp32 logits and fits nothing). Least squares on the relative error
of the token capacity, within bounds; the values are then written into the presets by hand with
this provenance.
"""

from __future__ import annotations

import argparse
import sys

from sextant.validate.kv_capacity import cross_validate_kv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    report = cross_validate_kv()
    for preset, values in report.fitted.items():
        shipped = report.shipped[preset]
        print(f"{preset}: fitted " + ", ".join(f"{k} {v:.3f}" for k, v in values.items())
              + "; shipped " + ", ".join(f"{k} {v:.3f}" for k, v in shipped.items() if k in values))
    for r in report.rows:
        print(f"  {r.id:5s} {r.group:8s} measured {r.measured_tokens:>9,} predicted {r.predicted_tokens:>9,} "
              f"({r.error:+.1%}); held out by source {r.held_out_tokens:>9,} ({r.held_out_error:+.1%})")
    s, h = report.as_shipped, report.held_out
    print(f"as shipped: median {s.median:.1%}, p90 {s.p90:.1%}, max {s.max:.1%} ({s.max_id}); "
          f"leave-one-source-out: median {h.median:.1%}, p90 {h.p90:.1%}, max {h.max:.1%} ({h.max_id})")
    if args.check:
        stale = [f"{p}.{k}" for p, values in report.fitted.items() for k, v in values.items()
                 if abs(report.shipped[p].get(k, 0.0) - v) > 0.01 * max(abs(v), 0.1)]
        if stale:
            sys.exit(f"presets differ from the fit: {', '.join(stale)}")


if __name__ == "__main__":
    main()
