"""export package: SavedModel for TF Serving, REST client, TFLite decoder step."""

import tfcap  # noqa: F401  (sets TF_CPP_MIN_LOG_LEVEL before TensorFlow loads)
