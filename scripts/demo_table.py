"""Prints the demo's per-phase test table and checks what the demo promises."""

import json
import sys

from tfcap.evaluate import score_table

run_dir = sys.argv[1]
rows = {
    p: json.loads(open(f"{run_dir}/scores_test_{p}.json").read().strip().splitlines()[-1])
    for p in ("xe", "scst", "gan")
}
print("\n".join(score_table(rows)))
print(f"(d_human_refs, the discriminator on human references: {rows['gan']['d_human_refs']:.3f})")
xe, scst = rows["xe"], rows["scst"]
problems = []
if xe["CIDEr"] < 2 * xe["swapped_CIDEr"]:
    problems.append("xe: test CIDEr is not twice the swapped-features control")
if scst["CIDEr"] <= xe["CIDEr"]:
    problems.append("scst did not raise test CIDEr over xe")
for p in problems:
    print("WARNING:", p)
sys.exit(1 if problems else 0)
