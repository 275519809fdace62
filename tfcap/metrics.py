r"""pycocoevalcap scores for any COCO-format results file, as one JSON line.

  python -m tfcap.metrics --annotations=A.json --results=R.json \
      [--scorers=bleu,meteor,rouge,cider] [--cider_backend=pycocoevalcap|tfcap] [--allow_missing]

Annotations: COCO caption format, `{"annotations": [{"image_id": int, "caption": str}, ...]}`
(an "images" list is not needed); the annotated images are those with a caption.
Results: COCO results format, `[{"image_id": int, "caption": str}, ...]`, one entry per image.
By default the results must cover every annotated image; with `--allow_missing`
(`allow_missing=True`) only the images present are scored, with a logged warning and a
note in the output saying how many.

Captions are tokenized once by pycocoevalcap's PTBTokenizer (Java), as its COCOEvalCap
does, then scored by Bleu(4), Meteor(), Rouge(), Cider() and optionally Spice(). Output
keys are pycocoevalcap's: Bleu_1..Bleu_4, METEOR, ROUGE_L, CIDEr, SPICE, plus "notes" (a
list of strings) when something was skipped or only a subset was scored. SPICE needs
Stanford CoreNLP 3.6.0 jars that pycocoevalcap downloads at first use; without them (offline)
SPICE is skipped with a note. `--cider_backend=tfcap` computes CIDEr with
`tfcap.rewards.cider.CiderD`, df from the scored references (pycocoevalcap's convention).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Mapping, Sequence

from absl import app, flags, logging

from tfcap import cli, errors

SCORERS = ("bleu", "meteor", "rouge", "cider", "spice")
DEFAULT_SCORERS = ("bleu", "meteor", "rouge", "cider")
CIDER_BACKENDS = ("pycocoevalcap", "tfcap")
SPICE_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
_LINE_BREAKS = str.maketrans({c: " " for c in "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"})

_ANNOTATIONS = flags.DEFINE_string("annotations", None, "COCO caption annotations json.")
_RESULTS = flags.DEFINE_string("results", None, 'Results json: [{"image_id", "caption"}, ...].')
_SCORERS = flags.DEFINE_list(
    "scorers", list(DEFAULT_SCORERS), f"Comma list of scorers, from {','.join(SCORERS)}."
)
_CIDER_BACKEND = flags.DEFINE_enum(
    "cider_backend", "pycocoevalcap", CIDER_BACKENDS, "CIDEr implementation."
)
_ALLOW_MISSING = flags.DEFINE_bool(
    "allow_missing", False, "Score only the annotated images present in --results."
)
flags.register_validator(
    "scorers",
    lambda names: bool(names) and set(names) <= set(SCORERS),
    message=f"--scorers takes a non-empty comma list from {','.join(SCORERS)}",
)


def _examples(ids, count: int = 5) -> str:
    ids = sorted(ids)
    return ", ".join(map(str, ids[:count])) + (", ..." if len(ids) > count else "")


def _load_json(path: str):
    with errors.open_input(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise errors.BadInput(f"{path}: not valid JSON ({err})") from err


def load_references(path: str) -> dict[int, list[str]]:
    """{image_id: [captions]} from a COCO caption annotations file, in file order."""
    data = _load_json(path)
    anns = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(anns, list):
        raise errors.BadInput(f'{path}: not COCO caption annotations (no "annotations" list)')
    refs: dict[int, list[str]] = {}
    for i, ann in enumerate(anns):
        if not _is_entry(ann):
            raise errors.BadInput(f'{path}: annotation {i} needs "image_id" (int), "caption" (str)')
        refs.setdefault(ann["image_id"], []).append(ann["caption"])
    if not refs:
        raise errors.BadInput(f"{path}: no annotations")
    return refs


def _is_entry(item) -> bool:
    return (
        isinstance(item, dict)
        and isinstance(item.get("image_id"), int)
        and not isinstance(item.get("image_id"), bool)
        and isinstance(item.get("caption"), str)
    )


def load_results(path: str) -> dict[int, str]:
    """{image_id: caption} from a COCO results file; rejects malformed entries and repeats."""
    data = _load_json(path)
    if not isinstance(data, list):
        raise errors.BadInput(
            f'{path}: results must be a JSON list of {{"image_id": int, "caption": str}}, '
            f"got {type(data).__name__}"
        )
    cands: dict[int, str] = {}
    repeated = set()
    for i, item in enumerate(data):
        if not _is_entry(item):
            raise errors.BadInput(
                f'{path}: entry {i} needs "image_id" (int) and "caption" (str), got {item!r:.120}'
            )
        if item["image_id"] in cands:
            repeated.add(item["image_id"])
        cands[item["image_id"]] = item["caption"]
    if repeated:
        raise errors.BadInput(
            f"{path}: {len(repeated)} image ids appear more than once ({_examples(repeated)})"
        )
    return cands


def score_files(
    annotations: str,
    results: str,
    scorers: Sequence[str] = DEFAULT_SCORERS,
    cider_backend: str = "pycocoevalcap",
    allow_missing: bool = False,
) -> dict:
    """Scores a COCO results file against COCO caption annotations (see the module doc)."""
    check_options(scorers, cider_backend)
    refs, cands = load_references(annotations), load_results(results)
    unknown = set(cands) - set(refs)
    if unknown:
        raise errors.BadInput(
            f"{results}: {len(unknown)} image ids are not annotated in {annotations} "
            f"({_examples(unknown)})"
        )
    notes = []
    if len(cands) < len(refs):
        missing = set(refs) - set(cands)
        message = (
            f"{results}: covers {len(cands)} of the {len(refs)} images annotated in "
            f"{annotations} ({len(missing)} missing: {_examples(missing)})"
        )
        if not allow_missing or not cands:
            raise errors.BadInput(message + ("" if cands else "; nothing to score"))
        logging.warning("%s; scoring only those (allow_missing)", message)
        notes.append(f"scored {len(cands)} of {len(refs)} annotated images (allow_missing)")
        refs = {i: r for i, r in refs.items() if i in cands}
    scores = score_captions(refs, cands, scorers, cider_backend)
    if notes:
        scores["notes"] = notes + scores.get("notes", [])
    return scores


def check_options(scorers: Sequence[str], cider_backend: str = "pycocoevalcap") -> None:
    """Raises `tfcap.errors.BadInput` naming an unknown scorer or CIDEr backend."""
    bad = [s for s in scorers if s not in SCORERS]
    if bad or not scorers:
        raise errors.BadInput(f"unknown scorers {bad or '(none given)'}; choose from {SCORERS}")
    if cider_backend not in CIDER_BACKENDS:
        raise errors.BadInput(f"cider_backend {cider_backend!r} is not one of {CIDER_BACKENDS}")


def score_captions(
    refs: Mapping[int, Sequence[str]],
    cands: Mapping[int, str],
    scorers: Sequence[str] = DEFAULT_SCORERS,
    cider_backend: str = "pycocoevalcap",
) -> dict:
    """pycocoevalcap scores of raw captions: {"Bleu_1": float, ..., ["notes": [str]]}.

    Args:
        refs: image id -> raw reference captions (at least one each).
        cands: image id -> raw candidate caption; the same ids as `refs`.
        scorers: names from `SCORERS`.
        cider_backend: "pycocoevalcap" or "tfcap" (`CiderD`, df from these references).
    """
    check_options(scorers, cider_backend)
    if set(refs) != set(cands) or not refs:
        only_refs, only_cands = _examples(set(refs) - set(cands)), _examples(set(cands) - set(refs))
        raise ValueError(
            "refs and cands need the same non-empty image ids; "
            f"only in refs: [{only_refs}]; only in cands: [{only_cands}]"
        )
    empty = [i for i, r in refs.items() if not r]
    if empty:
        raise ValueError(f"images without references: {_examples(empty)}")
    gts, res = tokenize(refs, cands)
    scores: dict = {}
    notes: list[str] = []
    log = io.StringIO()
    with contextlib.redirect_stdout(log):  # pycocoevalcap prints its progress
        for name in dict.fromkeys(scorers):
            scores.update(_run_scorer(name, gts, res, cider_backend, notes))
    if log.getvalue().strip():
        logging.debug("pycocoevalcap output:\n%s", log.getvalue())
    if notes:
        scores["notes"] = notes
    return scores


def tokenize(refs: Mapping[int, Sequence[str]], cands: Mapping[int, str]):
    """PTB-tokenized (gts, res) in pycocoevalcap's shape: {id: [str, ...]}, {id: [str]}.

    One PTBTokenizer run for both (it works line by line, so the tokens are those of two
    runs); line breaks inside a caption become spaces, so lines stay aligned.
    """
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    def entries(captions):
        return [{"caption": c.translate(_LINE_BREAKS)} for c in captions]

    both = {("ref", i): entries(r) for i, r in refs.items()}
    both.update({("cand", i): entries([c]) for i, c in cands.items()})
    out = PTBTokenizer().tokenize(both)
    if any(len(out.get(k, ())) != len(v) for k, v in both.items()):
        raise RuntimeError("PTBTokenizer returned a different number of lines than it was given")
    gts = {i: out[("ref", i)] for i in refs}
    return gts, {i: out[("cand", i)] for i in refs}


def spice_missing_jars() -> list[str]:
    """The Stanford CoreNLP jars SPICE needs that are not in pycocoevalcap/spice/lib."""
    import pycocoevalcap.spice

    lib = os.path.join(os.path.dirname(pycocoevalcap.spice.__file__), "lib")
    return [jar for jar in SPICE_JARS if not os.path.exists(os.path.join(lib, jar))]


def _run_scorer(name: str, gts, res, cider_backend: str, notes: list[str]) -> dict[str, float]:
    if name == "bleu":
        from pycocoevalcap.bleu.bleu import Bleu

        return {f"Bleu_{k + 1}": float(s) for k, s in enumerate(Bleu(4).compute_score(gts, res)[0])}
    if name == "meteor":
        from pycocoevalcap.meteor.meteor import Meteor

        meteor = Meteor()  # a Java process, stopped when the object goes
        try:
            return {"METEOR": float(meteor.compute_score(gts, res)[0])}
        finally:
            del meteor
    if name == "rouge":
        from pycocoevalcap.rouge.rouge import Rouge

        return {"ROUGE_L": float(Rouge().compute_score(gts, res)[0])}
    if name == "cider":
        return {"CIDEr": _cider(gts, res, cider_backend)}
    return _spice(gts, res, notes)


def _cider(gts, res, backend: str) -> float:
    if backend == "tfcap":
        from tfcap.rewards.cider import CiderD

        refs = [gts[i] for i in gts]
        return float(CiderD(refs).score([res[i][0] for i in gts], refs)[0])
    from pycocoevalcap.cider.cider import Cider

    return float(Cider().compute_score(gts, res)[0])


def _spice(gts, res, notes: list[str]) -> dict[str, float]:
    missing = spice_missing_jars()
    if missing:
        note = (
            f"SPICE skipped: pycocoevalcap/spice/lib lacks {', '.join(missing)} "
            "(pycocoevalcap downloads Stanford CoreNLP 3.6.0 at first use; no network here)"
        )
    else:
        from pycocoevalcap.spice.spice import Spice

        try:
            return {"SPICE": float(Spice().compute_score(gts, res)[0])}
        except Exception as err:  # a Java failure must not lose the other scores
            note = f"SPICE failed and was skipped: {type(err).__name__}: {err}"
    logging.warning(note)
    notes.append(note)
    return {}


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    scores = score_files(
        _ANNOTATIONS.value,
        _RESULTS.value,
        _SCORERS.value,
        _CIDER_BACKEND.value,
        _ALLOW_MISSING.value,
    )
    print(json.dumps(scores))


if __name__ == "__main__":
    flags.mark_flags_as_required(["annotations", "results"])
    cli.run(main)
