"""tfcap: image captioning with bottom-up features and an Up-Down attention LSTM."""

import os

# TensorFlow's C++ start-up chatter (CUDA probing, CPU feature notes) hides the
# program's own output; users can still set TF_CPP_MIN_LOG_LEVEL themselves.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
