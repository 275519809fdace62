"""Flags shared by several entry points, defined once.

absl flags are process-global, and one process (a test run, a notebook) may
import several entry points; each shared flag is defined here and imported by
the entry points that use it. Library modules never import this.
"""

from absl import flags

DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "A dataset directory written by tfcap.data.prepare."
)
MODEL_DIR = flags.DEFINE_string(
    "model_dir", None, "Training directory: checkpoints, TensorBoard logs, flags.txt."
)
BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", 10, "Images per global batch (each with --seq_per_img captions).", lower_bound=1
)
SEED = flags.DEFINE_integer("seed", 0, "Random seed (data generation, shuffling, initialisation).")
SKIP_BAD_RECORDS = flags.DEFINE_bool(
    "skip_bad_records",
    False,
    "Skip and count malformed records (reported at the end) instead of stopping at the first.",
)
OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None, "Directory to write to (a dataset, extracted features, TFLite models)."
)
PRESET = flags.DEFINE_enum(
    "preset",
    "demo",
    ["updown", "multiatt", "demo"],
    "Model sizes (tfcap.model.presets); tfcap.bench uses updown unless given.",
)
BEAM_SIZE = flags.DEFINE_integer("beam_size", 3, "Beam size (1: greedy).", lower_bound=1)
LENGTH_PENALTY = flags.DEFINE_float(
    "length_penalty", 0.0, "Beam length-normalisation alpha.", lower_bound=0
)
CHECKPOINT = flags.DEFINE_enum(
    "checkpoint",
    "best",
    ["best", "latest", "xe", "scst", "gan"],
    "Which checkpoint: best validation CIDEr, latest, or the end of a phase.",
)
