"""Validation: val captions scored in-process with CIDEr-D during a phase, and
pycocoevalcap's scores on all of val when it ends.

Captions are greedy (or beam search with `beam_size > 1`) and scored against
the val references with tfcap's CIDEr-D, whose document frequencies come from
those same references (as pycocoevalcap computes them).
"""

from __future__ import annotations

from tfcap import inference, metrics
from tfcap.data import pipeline, vocab
from tfcap.model.captioner import Captioner
from tfcap.rewards import cider


class Validator:
    """Decodes and scores val images with the model as it is at the call.

    Args:
        model: the captioner (its current weights are used).
        data_dir: the dataset.
        images: val images decoded by `cider` (0 or None: all).
        batch_size: images per decoding batch.
        beam_size: 1 for greedy decoding.
    """

    def __init__(
        self, model: Captioner, data_dir: str, images: int = 500, batch_size=50, beam_size=1
    ):
        self.model, self.data_dir = model, data_dir
        self.images, self.batch_size, self.beam_size = images or None, batch_size, beam_size
        self.words = pipeline.load_vocab(data_dir)
        self.refs = inference.references(data_dir, "val")
        method = "beam" if beam_size > 1 else "greedy"
        self._generate = inference.make_generate_fn(model, method, beam_size, 0.0, model.max_len)
        self._scorer = None

    def decode(self, images: int | None) -> inference.Decoded:
        return inference.decode_split(
            self.model,
            self.words,
            self.data_dir,
            "val",
            batch_size=self.batch_size,
            max_images=images,
            generate_fn=self._generate,
        )

    def cider(self) -> tuple[float, inference.Decoded]:
        """CIDEr-D of the captions of the first `images` val images, and the captions."""
        decoded = self.decode(self.images)
        if self._scorer is None:  # the same images every time: their references encoded once
            refs = [_tokenized(self.refs[int(i)]) for i in decoded.image_ids]
            self._scorer = (cider.CiderD(refs), refs)
        scorer, refs = self._scorer
        captions = [_tokenized([c])[0] for c in decoded.captions]
        return float(scorer.score(captions, refs)[0]), decoded

    def final_scores(self) -> dict:
        """pycocoevalcap's scores (BLEU-1..4, METEOR, ROUGE-L, CIDEr) on all of val."""
        decoded = self.decode(None)
        refs = {int(i): self.refs[int(i)] for i in decoded.image_ids}
        cands = {int(i): c for i, c in zip(decoded.image_ids, decoded.captions, strict=True)}
        return metrics.score_captions(refs, cands)


def _tokenized(texts: list[str]) -> list[str]:
    return [" ".join(t) for t in vocab.tokenize_py(texts)]
