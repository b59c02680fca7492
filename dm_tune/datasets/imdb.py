"""IMDB movie-review sentiment (Maas et al., 2011): 25k training and 25k test reviews, 2 classes.

Layout (the aclImdb release): ``root/train/pos/*.txt``, ``root/train/neg/*.txt``,
``root/test/pos/*.txt``, ``root/test/neg/*.txt``; ``root`` may also be the parent of aclImdb/.
The unlabelled ``train/unsup`` reviews are not used.

**Class 0 is "pos", class 1 is "neg"**, so that ``imbalance: step`` (whose minority is the last
half of the classes) with ``imbalance_ratio: 10`` gives the paper's positive:negative 10:1.

``dataset_options.representation``:

- ``features`` (default): TF-IDF of the words, reduced by TruncatedSVD to ``dims`` (default
  300) dense features and standardised; every statistic fitted on aclImdb's ``train/`` texts,
  unsupervised (no labels), and never on the test texts: the validation split a run carves from
  ``train/`` afterwards is among the texts they were fitted on, as it is for the vocabulary
  below; input_kind "vector", model "imdb-mlp" (the paper's one hidden layer of 8 units; the
  paper used PV-DBOW document vectors, TF-IDF + SVD is the dependency-free stand-in).
- ``tokens``: token ids over the ``vocab_size`` (default 20000, counting the two reserved ids:
  0 = padding, 1 = unknown) most frequent tokens of ``train/``, the first ``max_len`` (default 400)
  tokens of each review, padded with 0 to the longest review's length (at most ``max_len``);
  input_kind "tokens", model "text".

A word (both representations) is a run of letters and digits of any script with their combining
marks, apostrophes only inside it (``tokenize``); a review of ``train/`` and one of ``test/``, or of
two classes, may not be the same file through a link.
"""

from __future__ import annotations

import functools
import re
import sys
import unicodedata
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dm_tune._validate import ConfigError
from dm_tune.datasets._base import DataError, Source, Split

CLASSES = ("pos", "neg")
LAYOUT = ("<data_root>/train/{pos,neg}/*.txt and <data_root>/test/{pos,neg}/*.txt (the aclImdb "
          "release; <data_root> may also be the folder that contains aclImdb/)")

# option -> (default, smallest allowed, representation it belongs to)
OPTIONS: dict[str, tuple[int, int, str]] = {
    "dims": (300, 2, "features"),
    "vocab_size": (20_000, 3, "tokens"),
    "max_len": (400, 1, "tokens"),
}
REPRESENTATIONS = ("features", "tokens")
TFIDF_MAX_WORDS = 50_000  # the most frequent words TF-IDF keeps (drops the long tail of typos)
SVD_SEED = 0

DEFAULTS = {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "schedule": "none",
            "batch_size": 128, "epochs": 30}

_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)  # the reviews' HTML line breaks: <br />, <br/>, <br>


@functools.cache
def _token_pattern() -> re.Pattern[str]:
    """A word: letters and digits of any script with their combining marks (Devanagari's vowel
    signs, a decomposed accent), apostrophes only inside it ("don't", not the quotes of 'great')."""
    marks, start = [], None
    for c in range(sys.maxunicode + 2):
        is_mark = c <= sys.maxunicode and unicodedata.category(chr(c)).startswith("M")
        if is_mark and start is None:
            start = c
        elif not is_mark and start is not None:
            marks.append(f"\\U{start:08x}-\\U{c - 1:08x}")
            start = None
    letter = r"[^\W_]"
    body = rf"(?:[^\W_]|[{''.join(marks)}])*"
    return re.compile(rf"{letter}{body}(?:'{letter}{body})*")


def tokenize(text: str) -> list[str]:
    """Lower-cased words (letters and digits in any script, with their combining marks, and
    apostrophes inside a word: "café" and "don't" are one word each, whether their accents are
    composed or not); the reviews' HTML line breaks are dropped, a typographic apostrophe (’)
    reads as ', and a quote's apostrophes are not part of its words."""
    text = unicodedata.normalize("NFC", text).lower().replace("\u2019", "'")
    return _token_pattern().findall(_BREAK.sub(" ", text))


def _options(options: Mapping[str, Any]) -> tuple[str, dict[str, int]]:
    rep = options.get("representation", "features")
    if rep not in REPRESENTATIONS:
        raise ConfigError("dataset_options.representation", rep, "expected one of: " + ", ".join(REPRESENTATIONS))
    values = {}
    for key, value in options.items():
        if key == "representation":
            continue
        if key not in OPTIONS:
            raise ConfigError(f"dataset_options.{key}", value,
                              "imdb takes: representation, " + ", ".join(OPTIONS))
        _, lo, used_by = OPTIONS[key]
        if used_by != rep:
            raise ConfigError(f"dataset_options.{key}", value, f"only used with representation {used_by!r}")
        if not isinstance(value, int) or isinstance(value, bool) or value < lo:
            raise ConfigError(f"dataset_options.{key}", value, f"expected an integer >= {lo}")
        values[key] = value
    return rep, {k: values.get(k, d) for k, (d, _, used_by) in OPTIONS.items() if used_by == rep}


def _find_root(root: Path) -> Path:
    if not (root / "train").is_dir() and (root / "aclImdb" / "train").is_dir():
        return root / "aclImdb"
    return root


def _read_split(root: Path, split: str, seen: dict[tuple[int, int], tuple[Path, str, int]]
                ) -> tuple[list[str], np.ndarray]:
    """The split's texts and labels; ``seen`` (file identity -> path, split, class) refuses one file
    in two splits or under two classes (test reviews trained on, a review taught with two labels),
    as ImageFolder does; in one class of one split a repeat is kept (the user's oversampling)."""
    texts: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(CLASSES):
        folder = root / split / name
        if not folder.is_dir():
            raise DataError(folder, "directory not found", LAYOUT)
        # (.txt in any case, as ImageFolder reads .PNG; not a folder named x.txt; not a hidden file, such
        # as the ._0_7.txt macOS writes beside each review on a foreign disk: ImageFolder passes them over)
        named = sorted(f for f in folder.iterdir() if f.suffix.lower() == ".txt" and not f.name.startswith("."))
        for f in named:
            if f.is_symlink() and not f.exists():  # (was left out without a word; ImageFolder refuses it)
                raise DataError(f, "is a link to a review that is not there", LAYOUT)
            if not f.is_file() and not f.is_dir():  # (a pipe or a device: was left out without a word)
                raise DataError(f, "is not a regular file", LAYOUT)
        files = [f for f in named if f.is_file()]
        if not files:
            raise DataError(folder, "has no .txt reviews", LAYOUT)
        for f in files:  # (decoded strictly: Latin-1's "café très" was tokenised as 'caf', 'tr', 's')
            try:
                st = f.stat()
                first = seen.setdefault((st.st_dev, st.st_ino), (f, split, label))
                if first[1:] != (split, label):
                    what = ("a review in two splits (the evaluation would score reviews the model trained on)"
                            if first[1] != split else "a review under two classes")
                    raise DataError(f, f"is the same file as {first[0]} (through a link): {what}", LAYOUT)
                texts.append(f.read_bytes().decode("utf-8"))
            except OSError as e:
                raise DataError(f, f"could not be read ({e.strerror or e})", LAYOUT) from None
            except UnicodeDecodeError as e:
                raise DataError(f, f"is not UTF-8 text (byte {e.start}: {e.reason})", LAYOUT) from None
        if not any(t.strip() for t in texts[len(labels):]):  # (as after an extraction that failed)
            raise DataError(folder, f"its {len(files)} reviews are all empty", LAYOUT)
        labels += [label] * len(files)
    return texts, np.asarray(labels, dtype=np.int64)


def tfidf_svd(train: list[str], test: list[str], dims: int) -> tuple[np.ndarray, np.ndarray]:
    """Dense, standardised document features, every statistic fitted on ``train`` only."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(tokenizer=tokenize, lowercase=False, token_pattern=None,
                          sublinear_tf=True, max_features=TFIDF_MAX_WORDS)
    a_tr = vec.fit_transform(train)
    limit = min(a_tr.shape) - 1
    if limit < OPTIONS["dims"][1]:  # (it read "expected at most 0", below the smallest dims there is)
        raise ConfigError("dataset_options.dims", dims,
                          f"this data ({a_tr.shape[0]} texts, {a_tr.shape[1]} words) gives no TF-IDF + SVD features "
                          f"of {OPTIONS['dims'][1]} dimensions or more; representation tokens takes it")
    if dims > limit:
        raise ConfigError("dataset_options.dims", dims,
                          f"expected at most {limit} for this data ({a_tr.shape[0]} texts, {a_tr.shape[1]} words)")
    svd = TruncatedSVD(dims, random_state=SVD_SEED)
    f_tr = svd.fit_transform(a_tr)
    f_te = svd.transform(vec.transform(test))
    mean, std = f_tr.mean(0), f_tr.std(0) + 1e-8
    return ((f_tr - mean) / std).astype(np.float32), ((f_te - mean) / std).astype(np.float32)


def token_ids(train: list[str], test: list[str], vocab_size: int, max_len: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(train ids, test ids, ids in use): int64 over the training vocabulary, each review's first
    ``max_len`` tokens padded with 0 to the longest review's length (at most ``max_len``)."""
    tokens_tr = [tokenize(t) for t in train]
    counts = Counter(tok for doc in tokens_tr for tok in doc)
    vocab = {tok: i + 2 for i, (tok, _) in enumerate(counts.most_common(vocab_size - 2))}

    tokens_te = [tokenize(t) for t in test]
    # as wide as the longest review needs, at most max_len: a max_len far above every review (one
    # meant as "do not truncate") costs no memory beyond it
    width = max(1, min(max_len, max(len(doc) for doc in tokens_tr + tokens_te)))

    def encode(docs: list[list[str]]) -> np.ndarray:
        out = np.zeros((len(docs), width), dtype=np.int64)  # 0 = padding
        for row, doc in zip(out, docs):
            ids = [vocab.get(tok, 1) for tok in doc[:width]]  # 1 = unknown
            row[:len(ids)] = ids
        return out

    return encode(tokens_tr), encode(tokens_te), len(vocab) + 2


def load(root: Path | None, options: Mapping[str, Any], download: bool = False) -> Source:
    rep, opts = _options(options)
    if root is None:
        raise ConfigError("data_root", None, "imdb is read from disk; give --data-root")
    if download:
        raise ConfigError("download", download, "imdb cannot be downloaded; unpack aclImdb under data_root")
    root = _find_root(root)
    seen: dict[tuple[int, int], tuple[Path, str, int]] = {}
    texts_tr, y_tr = _read_split(root, "train", seen)
    texts_te, y_te = _read_split(root, "test", seen)
    if not any(tokenize(t) for t in texts_tr):  # (TF-IDF failed on an empty vocabulary)
        raise DataError(root / "train", f"its {len(texts_tr)} reviews hold no words (letters or digits)", LAYOUT)
    info: dict[str, Any] = {"data_dir": str(root), "representation": rep, **opts}
    if rep == "features":
        x_tr, x_te = tfidf_svd(texts_tr, texts_te, opts["dims"])
        kind, model = "vector", "imdb-mlp"
    else:
        x_tr, x_te, used = token_ids(texts_tr, texts_te, opts["vocab_size"], opts["max_len"])
        kind, model = "tokens", "text"
        info["vocab_size_requested"] = opts["vocab_size"]
        info["vocab_size"] = used  # embedding rows the model needs (read by dm_tune.data)
    return Source(
        name="imdb",
        train=Split(torch.from_numpy(x_tr), torch.from_numpy(y_tr)),
        test=Split(torch.from_numpy(x_te), torch.from_numpy(y_te)),
        num_classes=2,
        input_kind=kind,
        default_model=model,
        class_names=CLASSES,
        defaults=dict(DEFAULTS),
        info=info,
    )
