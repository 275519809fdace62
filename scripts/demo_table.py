"""Prints the demo's per-phase test table and checks what the demo promises."""

import json
import sys

run_dir = sys.argv[1]
rows = {
    p: json.loads(open(f"{run_dir}/scores_test_{p}.json").read().strip().splitlines()[-1])
    for p in ("xe", "scst", "gan")
}
keys = [
    "Bleu_1",
    "Bleu_4",
    "METEOR",
    "ROUGE_L",
    "CIDEr",
    "swapped_CIDEr",
    "d_human",
    "distinct_1",
    "distinct_2",
    "unique_captions",
    "vocabulary",
    "mean_length",
]
print("| phase | " + " | ".join(keys) + " |")
print("|---|" + "---|" * len(keys))
for phase, s in rows.items():
    cells = [f"{s[k]:.3f}" if isinstance(s[k], float) else str(s[k]) for k in keys]
    print(f"| {phase} | " + " | ".join(cells) + " |")
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
