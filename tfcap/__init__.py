"""tfcap: image captioning with bottom-up features and an Up-Down attention LSTM."""
