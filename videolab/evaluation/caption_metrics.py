"""Captioning metrics: BLEU-1..4, METEOR, ROUGE-L and CIDEr from ``pycocoevalcap`` (the COCO caption toolkit).

    caption_scores({"vid1": ["a red square moves right", ...], ...}, {"vid1": "a red square moves to the right"})

Tokenization follows the COCO protocol: Stanford's PTB tokenizer (a jar shipped with pycocoevalcap, run with
``java``), lower-cased, punctuation removed. Without Java, or when the PTB tokenizer cannot run (it writes a temp
file into its own site-packages folder, which may be read-only), a plain tokenizer is used instead (lower case,
runs of letters/digits), the other metrics are still reported, and ``notes`` says so. METEOR is a Java program:
without Java it is ``None`` (with a note). Nothing here raises for a missing or broken Java; only bad inputs raise.

Things to know when reading the numbers:
* CIDEr (not CIDEr-D) takes its n-gram document frequencies from the references of the set being scored, so a
  score depends on the whole set: one video alone always scores CIDEr 0 (every n-gram is in every "document").
  Compare CIDEr only between prediction sets scored against the same references.
* BLEU is corpus-level (n-gram counts summed over all videos, brevity penalty "closest"), as in the COCO toolkit.
* SPICE is not computed (it downloads Stanford CoreNLP models on first use).
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
from typing import Iterator, Optional

BLEU_KEYS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4")
METRIC_KEYS = BLEU_KEYS + ("METEOR", "ROUGE-L", "CIDEr")


def check_caption_inputs(references: dict[str, list[str]], predictions: dict[str, str]) -> None:
    """Raise ValueError (got / expected / fix) unless both dicts have the same non-empty ids and valid captions."""
    if not isinstance(references, dict) or not isinstance(predictions, dict):
        raise ValueError(f"expected two dicts (video id -> list of reference captions, video id -> predicted "
                         f"caption), got {type(references).__name__} and {type(predictions).__name__}")
    if not references:
        raise ValueError("got no references; expected at least one video id with reference captions")
    missing = sorted(set(references) - set(predictions), key=str)
    extra = sorted(set(predictions) - set(references), key=str)
    if missing or extra:
        raise ValueError(f"references and predictions must have the same video ids; missing predictions for "
                         f"{missing[:5]}{' ...' if len(missing) > 5 else ''}, predictions without references for "
                         f"{extra[:5]}{' ...' if len(extra) > 5 else ''}; score the same set of videos in both")
    for vid, refs in references.items():
        if isinstance(refs, str) or not isinstance(refs, (list, tuple)) or not refs:
            raise ValueError(f"references[{vid!r}]: expected a non-empty list of strings, got {refs!r}; "
                             f"wrap a single reference as [caption]")
        for ref in refs:
            if not isinstance(ref, str) or not ref.strip():
                raise ValueError(f"references[{vid!r}]: expected non-empty strings, got {ref!r}; "
                                 f"drop empty references")
    for vid, pred in predictions.items():
        if not isinstance(pred, str):  # an empty prediction is allowed: it scores (close to) zero
            raise ValueError(f"predictions[{vid!r}]: expected one string, got {type(pred).__name__} {pred!r}; "
                             f"keep one caption per video (e.g. the top beam)")


# ----------------------------------------------------------------------------------------------------------------
# Tokenization
# ----------------------------------------------------------------------------------------------------------------
def simple_tokenize(sentences: list[str]) -> list[str]:
    """Fallback for the PTB tokenizer: lower case, keep runs of letters/digits, join with single spaces.

    Close to PTB + punctuation removal for plain captions; it differs on clitics ("don't" -> "don t", PTB gives
    "do n't"), so scores from the two tokenizers are not interchangeable.
    """
    return [" ".join(re.findall(r"[^\W_]+", s.lower())) for s in sentences]


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null: the PTB jar prints a throughput line on stderr for every call."""
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all
        yield
        return
    sys.stderr.flush()
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def ptb_tokenize(sentences: list[str]) -> list[str]:
    """pycocoevalcap's PTBTokenizer (lower-cased, punctuation dropped), one output string per input sentence.

    Blank sentences are not sent to the jar (it reads a file of lines and can drop a trailing empty one); they
    come back as "". Raises OSError (no java, read-only package folder) or RuntimeError (lines lost).
    """
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    keep = [i for i, s in enumerate(sentences) if s.strip()]
    out = [""] * len(sentences)
    if not keep:
        return out
    with _stderr_silenced():
        tokenized = PTBTokenizer().tokenize({i: [{"caption": sentences[i]}] for i in keep})
    lost = [i for i in keep if len(tokenized.get(i, [])) != 1]
    if lost:
        raise RuntimeError(f"PTB tokenizer returned no line for {len(lost)} of {len(keep)} captions "
                           f"(first: {sentences[lost[0]]!r})")
    for i in keep:
        out[i] = tokenized[i][0]
    return out


def tokenize_for_scoring(references: dict[str, list[str]], predictions: dict[str, str],
                         use_java: bool) -> tuple[dict, dict, str, list[str]]:
    """-> (gts {id: [ref tokens, ...]}, res {id: [hyp tokens]}, tokenizer name "ptb" | "simple", notes)."""
    ids = list(references)
    sentences = [s for vid in ids for s in (*references[vid], predictions[vid])]  # one jar call for all
    notes, tokens, name = [], None, "simple"
    if use_java:
        try:
            tokens, name = ptb_tokenize(sentences), "ptb"
        except (OSError, RuntimeError, subprocess.SubprocessError, UnicodeError) as exc:
            notes.append(f"PTB tokenizer failed ({_one_line(exc)}); used the simple lower-case/"
                         f"punctuation-stripping tokenizer instead")
    else:
        notes.append("java not found on PATH: used the simple lower-case/punctuation-stripping tokenizer instead "
                     "of the PTB tokenizer")
    if tokens is None:
        tokens = simple_tokenize(sentences)
    gts, res, pos = {}, {}, 0
    for vid in ids:
        n = len(references[vid])
        gts[vid], res[vid] = tokens[pos:pos + n], [tokens[pos + n]]
        pos += n + 1
    return gts, res, name, notes


def _one_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0][:160] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ----------------------------------------------------------------------------------------------------------------
# Scorers
# ----------------------------------------------------------------------------------------------------------------
def meteor_score(gts: dict[str, list[str]], res: dict[str, list[str]]) -> float:
    """Corpus METEOR 1.5 from pycocoevalcap's jar; the Java process is always shut down afterwards.

    pycocoevalcap's Meteor holds a lock while talking to the jar and its ``__del__`` takes the same lock: an
    exception mid-call would leave it held and hang garbage collection, so the lock is released here on errors.
    """
    from pycocoevalcap.meteor.meteor import Meteor
    meteor = Meteor()  # FileNotFoundError without java
    try:
        score, _ = meteor.compute_score(gts, res)
        return float(score)
    finally:
        if meteor.lock.locked():
            meteor.lock.release()
        with contextlib.suppress(OSError, ValueError):
            meteor.meteor_p.stdin.close()
        meteor.meteor_p.kill()
        meteor.meteor_p.wait()


def caption_scores(references: dict[str, list[str]], predictions: dict[str, str]) -> dict:
    """Score predicted captions against references with the COCO caption metrics.

    Args:
        references: video id -> non-empty list of reference captions (raw text).
        predictions: video id -> one predicted caption (raw text; may be empty). Same ids as ``references``.
    Returns:
        {"BLEU-1".."BLEU-4", "METEOR", "ROUGE-L", "CIDEr": float (METEOR None without Java),
         "num_videos": int, "tokenizer": "ptb" | "simple", "notes": [str, ...]}
    Raises:
        ValueError for mismatched ids, empty inputs or non-string captions; never for a missing/broken Java.
    """
    check_caption_inputs(references, predictions)
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    java = shutil.which("java") is not None
    gts, res, tokenizer_name, notes = tokenize_for_scoring(references, predictions, use_java=java)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    meteor: Optional[float] = None
    if not java:
        notes.append("METEOR is unavailable without Java (pycocoevalcap runs meteor-1.5.jar); install a JRE "
                     "(e.g. openjdk-17-jre-headless) to get it")
    else:
        try:
            meteor = meteor_score(gts, res)
        except (OSError, ValueError, subprocess.SubprocessError, AssertionError) as exc:
            notes.append(f"METEOR failed ({_one_line(exc)}); reported as None")
    scores = {key: float(value) for key, value in zip(BLEU_KEYS, bleu)}
    scores.update({"METEOR": meteor, "ROUGE-L": float(rouge), "CIDEr": float(cider)})
    scores.update(num_videos=len(references), tokenizer=tokenizer_name, notes=notes)
    return scores
