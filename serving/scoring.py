"""The fraud decision: train an xgboost model on a backfilled training set; decide with rules, then the model.

Training (:func:`train`, ``tessera train``):

- Features: :class:`serving.vectorize.Vectorizer` over the Join's output schema (the one path training and
  serving share; its spec is saved with the model and serving rebuilds it from the model file).
- Time-based split: rows sorted by ``time_col``; the earliest ``1 - valid_fraction`` train, the rest validate.
  (Rows with the same timestamp stay on the same side.)
- xgboost ``hist`` on CPU, a fixed number of rounds (no early stopping, so validation is used only for
  thresholds and metrics). Class imbalance: ``scale_pos_weight = negatives / positives`` of the train part.
- Thresholds, chosen on validation scores (the rule, :func:`choose_thresholds`):
  *decline*: the lowest score *of a fraudulent validation payment* at which validation precision
  (``score >= t``) is at least ``decline_precision`` (default 0.9), with at least ``min_decline_hits``
  (default 3) true positives at or above it; if no score qualifies, the score of
  the single highest-scoring payment, plus a hair (i.e. nothing declines by model alone).
  *review*: the score above which ``review_alert_rate`` (default 1 %) of validation payments fall, capped at
  the decline threshold; payments at or above review and below decline go to review.
- Metrics on validation: PR-AUC (average precision), ROC-AUC, base rate, and precision / recall / alert rate
  at each threshold (``score >= threshold``).
- Output in ``out_dir``: ``model.ubj`` (xgboost's own UBJSON format, feature names inside) and
  ``model.json`` (join, vectorizer spec = feature order, thresholds, metrics, params). No pickle.

Deciding (:class:`Decider`): rules first (:mod:`serving.rules`), then the model on the same vector with a time
budget; the action is the most severe of the rule hits and the model's threshold band. A model that is missing,
broken, raises or misses its budget gives a rules-only decision flagged ``model_fallback``.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import ctypes
import json
import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import xgboost as xgb

from features.plan import JoinPlan
from serving.rules import SEVERITY, Action, RuleHit, Rules
from serving.vectorize import Vectorizer

MODEL_FILE = "model.ubj"
MANIFEST_FILE = "model.json"
MANIFEST_FORMAT = 1

DEFAULT_PARAMS: dict[str, Any] = {
    "objective": "binary:logistic",
    "tree_method": "hist",
    "device": "cpu",
    "max_depth": 4,
    "eta": 0.08,
    "subsample": 0.9,
    "colsample_bytree": 0.8,
    "min_child_weight": 1.0,
    "lambda": 1.0,
    "max_bin": 128,
    "nthread": 1,  # OpenMP threads spin: on 2 shared cores nthread=2 measured 18x slower (14.3 s vs 0.77 s)
}


# ---------------------------------------------------------------------------------------------- metrics


def average_precision(y: np.ndarray, s: np.ndarray) -> float:
    """PR-AUC as average precision: the mean, over positives, of the precision at that positive's score
    (ties: every payment with an equal score counts together)."""
    y = np.asarray(y, dtype=np.float64)
    n_pos = y.sum()
    if n_pos == 0:
        return math.nan
    order = np.argsort(-np.asarray(s), kind="mergesort")
    ys, ss = y[order], np.asarray(s)[order]
    tp, fp = np.cumsum(ys), np.cumsum(1 - ys)
    last = np.r_[ss[1:] != ss[:-1], True]  # the last index of each tie group
    tp, fp = tp[last], fp[last]
    precision = tp / (tp + fp)
    recall_step = np.diff(np.r_[0.0, tp]) / n_pos
    return float(np.sum(precision * recall_step))


def roc_auc(y: np.ndarray, s: np.ndarray) -> float:
    """ROC-AUC as the Mann-Whitney statistic (ties count half)."""
    y = np.asarray(y, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    s = np.asarray(s, dtype=np.float64)
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    starts = np.r_[0, np.flatnonzero(sorted_s[1:] != sorted_s[:-1]) + 1]
    ends = np.r_[starts[1:], len(s)]
    avg = (starts + ends + 1) / 2.0  # 1-based average rank of each tie group
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def at_threshold(y: np.ndarray, s: np.ndarray, threshold: float) -> dict[str, float]:
    """Precision, recall and alert rate of ``score >= threshold``."""
    y = np.asarray(y, dtype=bool)
    flagged = np.asarray(s) >= threshold
    tp = int((flagged & y).sum())
    n_flagged = int(flagged.sum())
    return {
        "threshold": float(threshold),
        "precision": tp / n_flagged if n_flagged else math.nan,
        "recall": tp / int(y.sum()) if y.any() else math.nan,
        "alert_rate": n_flagged / len(s) if len(s) else math.nan,
        "flagged": n_flagged,
        "true_positives": tp,
    }


@dataclass(frozen=True)
class Thresholds:
    """Score bands: ``score >= decline`` declines, ``review <= score < decline`` reviews."""

    review: float
    decline: float
    rule: str = ""

    def action(self, score: float) -> Action:
        if score >= self.decline:
            return "decline"
        if score >= self.review:
            return "review"
        return "approve"


def choose_thresholds(
    y: np.ndarray,
    s: np.ndarray,
    *,
    decline_precision: float = 0.9,
    review_alert_rate: float = 0.01,
    min_decline_hits: int = 3,
) -> Thresholds:
    """Decline and review thresholds from validation labels ``y`` and scores ``s`` (the rule in the module
    docstring)."""
    y = np.asarray(y, dtype=bool)
    s = np.asarray(s, dtype=np.float64)
    rule = (
        f"decline: lowest fraud score on validation with precision >= {decline_precision} and >= {min_decline_hits} "
        f"true positives; review: top {review_alert_rate:.2%} of validation scores, capped at decline"
    )
    if len(s) == 0:
        return Thresholds(0.5, 1.0 + 1e-6, rule)
    order = np.argsort(-s, kind="mergesort")
    ys, ss = y[order], s[order]
    tp = np.cumsum(ys)
    n = np.arange(1, len(s) + 1)
    ends = np.flatnonzero(np.r_[ss[1:] != ss[:-1], True])  # a threshold sits on a tie group's end
    group_tp = np.diff(np.r_[0, tp[ends]])  # fraud within each tie group
    # only scores that catch a fraud: lowering the threshold past the last caught fraud adds false alarms only
    ok = (group_tp > 0) & (tp[ends] / n[ends] >= decline_precision) & (tp[ends] >= min_decline_hits)
    decline = float(ss[ends[np.flatnonzero(ok)[-1]]]) if ok.any() else float(np.nextafter(ss[0], np.inf))
    k = max(1, math.floor(review_alert_rate * len(s)))
    review = min(float(ss[k - 1]), decline)
    return Thresholds(review=review, decline=decline, rule=rule)


# ------------------------------------------------------------------------------------------------ train


@dataclass
class TrainResult:
    out_dir: Path
    metrics: dict[str, Any]
    thresholds: Thresholds
    feature_names: list[str]


def _read_table(training_set: pa.Table | str | Path) -> pa.Table:
    if isinstance(training_set, pa.Table):
        return training_set
    return pq.read_table(str(training_set))


def time_split(ts: np.ndarray, valid_fraction: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Indexes of the train (earlier) and validation (later) rows, and the cut time: the first timestamp of
    the validation part (every row with ``ts >= cut`` validates)."""
    if not 0 < valid_fraction < 1:
        raise ValueError(f"valid_fraction={valid_fraction} must be in (0, 1)")
    order = np.argsort(ts, kind="mergesort")
    cut = int(ts[order[min(len(ts) - 1, int(len(ts) * (1 - valid_fraction)))]])
    return np.flatnonzero(ts < cut), np.flatnonzero(ts >= cut), cut


def train(
    training_set: pa.Table | str | Path,
    join: JoinPlan,
    *,
    out_dir: str | Path,
    label: str = "is_fraud",
    time_col: str = "ts",
    valid_fraction: float = 0.3,
    num_boost_round: int = 200,
    params: Mapping[str, Any] | None = None,
    decline_precision: float = 0.9,
    review_alert_rate: float = 0.01,
    min_decline_hits: int = 3,
    seed: int = 0,
) -> TrainResult:
    """Train on ``training_set`` (a pyarrow Table or parquet path/directory with the Join's columns plus
    ``label``), write the model to ``out_dir`` and return its metrics and thresholds."""
    table = _read_table(training_set)
    for col in (label, time_col):
        if col not in table.column_names:
            raise ValueError(f"training set has no column {col!r}")
    labels = table.column(label).to_numpy(zero_copy_only=False)
    keep = ~np.isnan(labels.astype(np.float64))  # unlabeled rows do not train
    table = table.filter(pa.array(keep))
    y = labels[keep].astype(np.float64) > 0
    ts = table.column(time_col).to_numpy(zero_copy_only=False).astype(np.int64)

    vectorizer = Vectorizer.for_join(join.output_schema)
    missing = [c for c in vectorizer.input_columns if c not in table.column_names]
    if missing:
        raise ValueError(f"training set lacks {len(missing)} column(s) of Join {join.name!r}: {missing[:8]}")
    started = time.perf_counter()
    X = vectorizer.matrix(table)
    vectorize_s = time.perf_counter() - started
    tr, va, cut = time_split(ts, valid_fraction)
    if y[tr].sum() == 0 or y[va].sum() == 0:
        raise ValueError(
            f"need positives on both sides of the time split: train {int(y[tr].sum())}, valid {int(y[va].sum())}"
        )
    n_pos, n_neg = float(y[tr].sum()), float((~y[tr]).sum())
    p: dict[str, Any] = {**DEFAULT_PARAMS, **(params or {}), "seed": seed}
    if "scale_pos_weight" not in (params or {}):
        p["scale_pos_weight"] = n_neg / n_pos
    names = vectorizer.names
    dtrain = xgb.DMatrix(
        X[tr], label=y[tr].astype(np.float32), feature_names=names, missing=np.nan, nthread=p["nthread"]
    )
    started = time.perf_counter()
    booster = xgb.train(p, dtrain, num_boost_round=num_boost_round)
    train_s = time.perf_counter() - started

    s_va = _predict(booster, X[va])
    thresholds = choose_thresholds(
        y[va],
        s_va,
        decline_precision=decline_precision,
        review_alert_rate=review_alert_rate,
        min_decline_hits=min_decline_hits,
    )
    metrics: dict[str, Any] = {
        "rows": {"train": len(tr), "valid": len(va), "unlabeled_dropped": int((~keep).sum())},
        "positives": {"train": int(y[tr].sum()), "valid": int(y[va].sum())},
        "split_ts": cut,
        "features": len(names),
        "valid": {
            "base_rate": float(y[va].mean()),
            "pr_auc": average_precision(y[va], s_va),
            "roc_auc": roc_auc(y[va], s_va),
            "review": at_threshold(y[va], s_va, thresholds.review),
            "decline": at_threshold(y[va], s_va, thresholds.decline),
        },
        "train": {"pr_auc": average_precision(y[tr], _predict(booster, X[tr]))},
        "seconds": {"vectorize": vectorize_s, "train": train_s},
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(out / MODEL_FILE))
    manifest = {
        "format": MANIFEST_FORMAT,
        "join": join.name,
        "label": label,
        "time_col": time_col,
        "model_file": MODEL_FILE,
        "xgboost_version": xgb.__version__,
        "vectorizer": vectorizer.to_json(),
        "thresholds": asdict(thresholds),
        "metrics": metrics,
        "params": {k: v for k, v in p.items()},
        "num_boost_round": num_boost_round,
    }
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, default=_json_default) + "\n")
    return TrainResult(out, metrics, thresholds, names)


def _json_default(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    raise TypeError(f"not JSON serializable: {type(v).__name__}")


def _predict(booster: xgb.Booster, X: np.ndarray) -> np.ndarray:
    """The one prediction call (batch and single row alike)."""
    return np.asarray(booster.inplace_predict(X, missing=np.nan), dtype=np.float64)


class _RowState:
    """One thread's buffers for :class:`RowPredictor`: the row, its array interface (the buffer's address:
    valid while ``row`` lives), a proxy matrix and the output pointers."""

    def __init__(self, core: Any, array_interface: Any, n: int) -> None:
        self.row = np.zeros((1, n), dtype=np.float64)
        self.interface = array_interface(self.row)
        self.proxy = core._ProxyDMatrix()
        self.shape = ctypes.POINTER(core.c_bst_ulong)()
        self.dims = core.c_bst_ulong()
        self.preds = ctypes.POINTER(ctypes.c_float)()
        self.out = (ctypes.byref(self.shape), ctypes.byref(self.dims), ctypes.byref(self.preds))


class RowPredictor:
    """The score of one row, the same number as :func:`_predict` gives, at a fraction of its cost per call.

    ``Booster.inplace_predict`` costs ~0.2 ms for one row on this hardware, and the prediction itself (80 trees
    of depth 4) is a few microseconds of that: the rest is the Python wrapper (building the call's JSON
    arguments and the array's interface description, the result's shape) and, inside xgboost, a new proxy
    matrix per call whose context reads the cgroup CPU quota files (``stat``, ``open``, ``read`` and a regex)
    every time. This calls the same C function (``XGBoosterPredictFromDense``) with the same arguments, but
    built once: the arguments, a row buffer per thread and its interface, and a proxy matrix per thread that
    xgboost reuses. Same function, same input bytes: the same score (checked against :func:`_predict` when
    built; :meth:`build` returns None, and callers use :func:`_predict`, if xgboost's internals differ).
    """

    def __init__(self, booster: xgb.Booster, n_features: int) -> None:
        from xgboost import core
        from xgboost._data_utils import array_interface

        self._booster = booster
        self._n = n_features
        self._core = core
        self._array_interface = array_interface
        self._fn = core._LIB.XGBoosterPredictFromDense
        self._args = core.make_jcargs(
            type=0,
            training=False,
            iteration_begin=0,
            iteration_end=0,
            missing=math.nan,
            strict_shape=False,
            cache_id=0,
        )
        self._local = threading.local()

    @classmethod
    def build(cls, booster: xgb.Booster, n_features: int) -> RowPredictor | None:
        """A predictor whose scores equal :func:`_predict`'s on probe rows (missing, zero, mixed), or None."""
        try:
            predictor = cls(booster, n_features)
            probes = np.zeros((4, n_features), dtype=np.float64)
            probes[0] = math.nan
            probes[2] = np.linspace(-1e3, 1e6, n_features)
            probes[3, ::2] = math.nan
            probes[3, 1::2] = 1.0
            want = _predict(booster, probes)
            if all(predictor.score(probes[i]) == float(want[i]) for i in range(len(probes))):
                return predictor
        except Exception:  # another xgboost: its public call it is
            return None
        return None

    def _thread_state(self) -> _RowState:
        st: _RowState | None = getattr(self._local, "state", None)
        if st is None:
            st = self._local.state = _RowState(self._core, self._array_interface, self._n)
        return st

    def score(self, x: np.ndarray) -> float:
        """The score of the model vector ``x`` (float64, the model's feature order)."""
        st = self._thread_state()
        st.row[0] = x
        self._core._check_call(
            self._fn(self._booster.handle, st.interface, self._args, st.proxy.handle, *st.out)
        )
        if st.dims.value != 1 or st.shape[0] != 1:
            raise RuntimeError(f"xgboost returned {st.dims.value} dimension(s) for one row")
        return float(st.preds[0])


# ------------------------------------------------------------------------------------------------ model


class ModelError(RuntimeError):
    """A model directory that does not load or does not agree with itself."""


@dataclass(frozen=True)
class Contribution:
    feature: str
    value: float
    contribution: float


class Model:
    """A trained model as saved by :func:`train`: booster, vectorizer (from the model file), thresholds."""

    def __init__(
        self, booster: xgb.Booster, vectorizer: Vectorizer, thresholds: Thresholds, manifest: dict[str, Any]
    ):
        self.booster = booster
        self.vectorizer = vectorizer
        self.thresholds = thresholds
        self.manifest = manifest
        self.nthread = 1
        self.row_predictor = RowPredictor.build(booster, len(vectorizer.names))

    @classmethod
    def load(cls, model_dir: str | Path, *, nthread: int = 1) -> Model:
        d = Path(model_dir)
        try:
            manifest = json.loads((d / MANIFEST_FILE).read_text())
            if manifest.get("format") != MANIFEST_FORMAT:
                raise ModelError(
                    f"{d / MANIFEST_FILE}: format {manifest.get('format')!r}, expected {MANIFEST_FORMAT}"
                )
            vectorizer = Vectorizer.from_json(manifest["vectorizer"])
            thresholds = Thresholds(**manifest["thresholds"])
            booster = xgb.Booster()
            booster.load_model(str(d / manifest.get("model_file", MODEL_FILE)))
        except ModelError:
            raise
        except Exception as e:
            raise ModelError(f"cannot load the model in {d}: {type(e).__name__}: {e}") from e
        booster.set_param({"nthread": nthread})
        if list(booster.feature_names or []) != vectorizer.names:
            raise ModelError(
                f"{d}: the booster's feature names differ from the vectorizer spec in {MANIFEST_FILE}"
            )
        model = cls(booster, vectorizer, thresholds, manifest)
        model.nthread = nthread
        return model

    @property
    def feature_names(self) -> list[str]:
        return self.vectorizer.names

    def score_matrix(self, X: np.ndarray) -> np.ndarray:
        return _predict(self.booster, X)

    def score_table(self, table: pa.Table | Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Batch (offline) scores of feature rows: a training-set table or a list of dicts."""
        return self.score_matrix(self.vectorizer.matrix(table))

    def score(self, row: Mapping[str, Any]) -> float:
        """The (online) score of one feature row."""
        return self.score_vector(self.vectorizer.vector(row))

    def score_vector(self, x: np.ndarray) -> float:
        """The score of one model vector: :class:`RowPredictor` when it could be built, else :func:`_predict`
        (the same number)."""
        if self.row_predictor is not None:
            return self.row_predictor.score(x)
        return float(self.score_matrix(x[None, :])[0])

    def contributions(self, x: np.ndarray, top_k: int = 3) -> list[Contribution]:
        """The ``top_k`` features pushing this vector's score up the most (xgboost ``pred_contribs``, in
        log-odds), largest first; only positive contributions."""
        dm = xgb.DMatrix(x[None, :], feature_names=self.feature_names, missing=np.nan, nthread=self.nthread)
        # (DMatrix defaults to every core; on 2 shared cores that measured 18-28 ms instead of 0.35 ms)
        contribs = self.booster.predict(dm, pred_contribs=True)[0][:-1]  # the last column is the bias
        order = np.argsort(-contribs, kind="mergesort")[:top_k]
        return [
            Contribution(self.feature_names[i], float(x[i]), float(contribs[i]))
            for i in order
            if contribs[i] > 0
        ]


# ----------------------------------------------------------------------------------------------- decide

#: ``placement="auto"``: calls run in the pool first, to learn how long the model takes.
AUTO_WARMUP = 20
#: ``placement="auto"``: the recent calls whose durations decide between inline and the pool.
AUTO_WINDOW = 50
#: ``placement="auto"``: inline only while every recent call took at most this fraction of the budget.
AUTO_FAST_FRACTION = 0.25


@dataclass(frozen=True)
class Reason:
    """Why: a rule hit (``kind="rule"``, ``name`` = rule) or a model contribution (``kind="model"``,
    ``name`` = feature, ``value``, ``contribution``)."""

    kind: Literal["rule", "model"]
    name: str
    text: str
    action: Action | None = None
    value: float | None = None
    contribution: float | None = None


@dataclass(frozen=True)
class Decision:
    action: Action
    score: float | None
    reasons: list[Reason] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    model_action: Action | None = None
    latency_ms: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Decider:
    """Rules first, then the model; the most severe action wins.

    ``model`` is a model directory, a loaded :class:`Model`, or None (rules only). A directory that does not
    load is not an error: decisions are rules-only, flagged ``model_unavailable`` and ``model_fallback``
    (``load_error`` says why). The model has a budget of ``timeout_ms``; a model that misses it or raises gives
    a rules-only decision flagged ``model_timeout``/``model_error`` and ``model_fallback``.
    ``explain``: model contributions for review/decline decisions (``"flagged"``), always, or never.

    ``placement`` says where the model runs:

    * ``"pool"``: in a worker thread, waited for at most ``timeout_ms`` (a slow model is cut short: the
      decision's latency is bounded by the budget).
    * ``"inline"``: in the caller's thread, skipping the hand-over to a worker thread (two thread switches and
      a lock; under CPU contention that hand-over costs more than a 0.2 ms prediction). A call that runs past
      the budget cannot be cut short: its score is discarded and the decision is rules-only, flagged
      ``model_timeout``, exactly as in the pool, but that one decision took as long as the model did.
    * ``"auto"`` (what ``tessera serve`` uses): inline while the model is fast, the pool otherwise. The first
      :data:`AUTO_WARMUP` calls run in the pool; after that a call runs inline if every call of the last
      :data:`AUTO_WINDOW` took at most :data:`AUTO_FAST_FRACTION` of the budget. An inline call that takes
      longer sends the model back to the pool (bounded) until it is fast again, so at most one decision per
      slowdown overruns the budget.
    """

    def __init__(
        self,
        model: str | Path | Model | None,
        rules: Rules | None = None,
        *,
        timeout_ms: float = 50.0,
        top_k: int = 3,
        explain: Literal["flagged", "always", "never"] = "flagged",
        workers: int = 2,
        placement: Literal["pool", "inline", "auto"] = "pool",
    ):
        if placement not in ("pool", "inline", "auto"):
            raise ValueError(f"placement={placement!r}: expected pool, inline or auto")
        self.rules = rules if rules is not None else Rules.empty()
        self.placement = placement
        self.inline_calls = 0
        self.pool_calls = 0
        self._recent: collections.deque[float] = collections.deque(maxlen=AUTO_WINDOW)
        self.timeout_ms = timeout_ms
        self.top_k = top_k
        self.explain = explain
        self.load_error: str | None = None
        self.model: Model | None
        if isinstance(model, Model) or model is None:
            self.model = model
        else:
            try:
                self.model = Model.load(model)
            except ModelError as e:
                self.model, self.load_error = None, str(e)
        self._pool = cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tessera-model")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> Decider:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run_model(self, x: np.ndarray, rule_action: Action) -> tuple[float, Action, list[Contribution]]:
        model = self.model
        assert model is not None
        started = time.perf_counter()
        score = model.score_vector(x)
        model_action = model.thresholds.action(score)
        final = max(rule_action, model_action, key=SEVERITY.__getitem__)
        want = self.explain == "always" or (self.explain == "flagged" and final != "approve")
        contribs = model.contributions(x, self.top_k) if want and self.top_k > 0 else []
        self._recent.append(time.perf_counter() - started)
        return score, model_action, contribs

    def _inline_now(self) -> bool:
        """Whether this call runs in the caller's thread (see ``placement``)."""
        if self.placement != "auto":
            return self.placement == "inline"
        recent = self._recent
        if self.pool_calls + self.inline_calls < AUTO_WARMUP or not recent:
            return False
        return max(recent) <= AUTO_FAST_FRACTION * self.timeout_ms / 1000.0

    def _model(self, x: np.ndarray, rule_action: Action) -> tuple[float, Action, list[Contribution]]:
        """The model's answer within the budget; raises ``cf.TimeoutError`` when it missed it."""
        budget = self.timeout_ms / 1000.0
        if self._inline_now():
            self.inline_calls += 1
            started = time.perf_counter()
            result = self._run_model(x, rule_action)
            if time.perf_counter() - started > budget:
                raise cf.TimeoutError()  # too late to use: the same rules-only decision as a cut-short call
            return result
        self.pool_calls += 1
        future = self._pool.submit(self._run_model, x, rule_action)
        try:
            return future.result(timeout=budget)
        except cf.TimeoutError:
            future.cancel()
            self._recent.append(budget)  # a call that never came back counts as slow
            raise

    def decide(self, vector: Mapping[str, Any]) -> Decision:
        started = time.perf_counter()
        flags: list[str] = []
        rule_errors: list[str] = []
        hits: list[RuleHit] = self.rules.evaluate(vector, rule_errors)
        flags += [f"rule_error:{name}" for name in rule_errors]
        rule_action: Action = hits[0].action if hits else "approve"
        reasons = [Reason("rule", h.name, h.reason, action=h.action) for h in hits]
        score: float | None = None
        model_action: Action | None = None
        if self.model is None:
            flags += ["model_unavailable", "model_fallback"]
        else:
            try:
                x = self.model.vectorizer.vector(vector)
                score, model_action, contribs = self._model(x, rule_action)
            except cf.TimeoutError:
                flags += ["model_timeout", "model_fallback"]
            except Exception as e:
                flags += ["model_error", "model_fallback"]
                flags.append(f"model_error:{type(e).__name__}")
            else:
                reasons += [
                    Reason(
                        "model",
                        c.feature,
                        f"{c.feature} = {_fmt(c.value)} raised the score (+{c.contribution:.2f} log-odds)",
                        value=c.value,
                        contribution=c.contribution,
                    )
                    for c in contribs
                ]
        action: Action = rule_action
        if model_action is not None and SEVERITY[model_action] > SEVERITY[action]:
            action = model_action
        return Decision(
            action=action,
            score=score,
            reasons=reasons,
            flags=flags,
            model_action=model_action,
            latency_ms=(time.perf_counter() - started) * 1000.0,
        )


def _fmt(v: float) -> str:
    return "missing" if math.isnan(v) else f"{v:.4g}"


# --------------------------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """``tessera train --join fraud_v1 --training-set FILE --out model/``: train, print metrics, save."""
    ap = argparse.ArgumentParser(
        prog="tessera train", description=__doc__.split("\n")[0] if __doc__ else None
    )
    ap.add_argument("--join", required=True, help="Join name in the feature repo (e.g. fraud_v1)")
    ap.add_argument("--training-set", required=True, help="parquet file or directory from the backfill")
    ap.add_argument("--out", required=True, help="model directory to write")
    ap.add_argument("--repo", default=None, help="feature repo (default: features/fraud of this checkout)")
    ap.add_argument("--label", default="is_fraud")
    ap.add_argument("--time-col", default="ts")
    ap.add_argument("--valid-fraction", type=float, default=0.3)
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--decline-precision", type=float, default=0.9)
    ap.add_argument("--review-alert-rate", type=float, default=0.01)
    args = ap.parse_args(list(argv) if argv is not None else None)

    from features.compile import compile_repo

    repo = args.repo or str(Path(__file__).resolve().parent.parent / "features" / "fraud")
    try:
        join = compile_repo(repo).join(args.join)
        result = train(
            args.training_set,
            join,
            out_dir=args.out,
            label=args.label,
            time_col=args.time_col,
            valid_fraction=args.valid_fraction,
            num_boost_round=args.rounds,
            decline_precision=args.decline_precision,
            review_alert_rate=args.review_alert_rate,
        )
    except (ValueError, KeyError, OSError) as e:
        print(f"tessera train: {type(e).__name__}: {e}")
        return 1
    print(format_metrics(result))
    return 0


def format_metrics(result: TrainResult) -> str:
    m, v = result.metrics, result.metrics["valid"]
    lines = [
        f"model -> {result.out_dir} ({m['features']} features; train {m['rows']['train']} rows / "
        f"{m['positives']['train']} fraud, valid {m['rows']['valid']} rows / {m['positives']['valid']} fraud)",
        f"validation: PR-AUC {v['pr_auc']:.3f} (base rate {v['base_rate']:.4f}), ROC-AUC {v['roc_auc']:.3f}",
    ]
    for name in ("review", "decline"):
        t = v[name]
        lines.append(
            f"  {name:<7} score >= {t['threshold']:.4f}: precision {t['precision']:.3f}, recall {t['recall']:.3f}, "
            f"alert rate {t['alert_rate']:.4f}"
        )
    lines.append(f"  thresholds rule: {result.thresholds.rule}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
