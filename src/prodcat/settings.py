"""Typed settings: every key of every component declared once, with its type, allowed values and a
one-line doc; YAML files and `--set` overrides are checked against these declarations.

Layers, lowest first: the declared defaults -> the size rules (`size_rules`: settings that depend on the
number of training products, e.g. fastText epochs) -> the config file(s) (`extends:` chains) ->
`--set key.path=value`. An unknown key is an error naming the file, the key and the closest valid one; a
value of the wrong type or outside its range is an error naming the key and what is allowed. The result is
a plain dict with every key, so the settings hash of a model is taken over resolved values: writing a
default explicitly changes nothing.
"""
from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Union, get_args, get_origin, get_type_hints

from prodcat.errors import SettingsError
from prodcat.review_rule import ReviewRule

DEFAULT_CONFIG = Path("configs/default.yaml")


def setting(default, doc: str, *, choices: tuple | None = None, min: float | None = None,
            max: float | None = None, path: bool = False):
    """A declared setting: its default, a one-line doc and the allowed values; `path`: a file or folder,
    which `--set` gives relative to the caller's directory. A settings class or a function as the default is
    built when read (a section's defaults; a list from the model registry)."""
    meta = {"doc": doc, "choices": choices, "min": min, "max": max, "path": path}
    if callable(default) and (is_dataclass(default) or not isinstance(default, type)):
        return field(default_factory=default, metadata=meta)  # built when read (a section; from the registry)
    if isinstance(default, (list, dict)) or is_dataclass(default):
        value = default
        return field(default_factory=lambda: _copy(value), metadata=meta)
    return field(default=default, metadata=meta)


def _copy(value):
    import copy

    return copy.deepcopy(value)


# -- text ----------------------------------------------------------------------------------------------
@dataclass
class TextSettings:
    fields: list[str] = setting(["title", "short_description", "name_value_characteristics"],
                                "product fields that make the text",
                                choices=("title", "short_description", "name_value_characteristics"))
    title_repeat: int = setting(1, "times the title is repeated (weights it)", min=1, max=10)
    description_chars: int = setting(1000, "characters of the description kept", min=0)
    characteristic_names: bool = setting(True, "include characteristic names, not only their values")
    lemmatize: bool = setting(False, "natasha/pymorphy2 lemmas (Russian); cached per dataset")


# -- base models: each declares its settings class in its own module and registers itself -----------------
@dataclass(frozen=True)
class ModelSpec:
    """One base model's facts, registered by the model's own module (timm's decorator): the class that
    implements it, its settings class, whether `all` runs it by default, and the share of training products
    the stacker also sees without it (`stack.hide`: a model that is silent on tomorrow's products)."""

    cls: type
    settings: type
    pipeline: bool = True
    hide: float = 0.0


MODEL_SPECS: dict[str, ModelSpec] = {}  # registry order (prodcat.models imports them): listed and stacked so


def register_model(name: str, settings: type, *, pipeline: bool = True, hide: float = 0.0):
    """Class decorator: `@register_model("fasttext", FastTextSettings)` puts the model in MODEL_SPECS under
    `name` (also its class's `name`)."""
    def register(cls: type) -> type:
        cls.name = name
        MODEL_SPECS[name] = ModelSpec(cls, settings, pipeline, hide)
        return cls
    return register


def registered() -> dict[str, ModelSpec]:
    """MODEL_SPECS, filled: the models register when prodcat.models is imported (every command does)."""
    if not MODEL_SPECS:
        raise RuntimeError("no base model is registered: import prodcat.models before resolving settings")
    return MODEL_SPECS


# -- stacker and run -----------------------------------------------------------------------------------
@dataclass
class StackSettings:
    models: Union[list[str], None] = setting(None, "base models to stack (null: every finished one)")
    candidates: int = setting(10, "each model's best classes that become candidates", min=1)
    objective: str = setting("lambdarank", "LightGBM objective", choices=("lambdarank", "rank_xendcg", "binary"))
    num_boost_round: int = setting(100, "boosting rounds", min=1)
    learning_rate: float = setting(0.1, "LightGBM learning rate", min=0.0)
    num_leaves: int = setting(7, "leaves per tree", min=2)
    min_data_in_leaf: int = setting(20, "minimal pairs per leaf", min=1)
    feature_fraction: float = setting(0.9, "features per tree", min=0.0, max=1.0)
    bagging_fraction: float = setting(0.8, "pairs per tree", min=0.0, max=1.0)
    lambda_l2: float = setting(1.0, "L2 regularisation", min=0.0)
    max_train_products: int = setting(60_000, "products (queries) sampled per fold ranker", min=1)
    num_threads: int = setting(1, "LightGBM threads (0: all cores)", min=0)
    decoding: str = setting("expected_hf1", "leaf choice", choices=("expected_hf1", "argmax"))
    folds: Union[int, None] = setting(None, "the ranker's cross-validation folds (null: the run's k)", min=2)
    product_features: bool = setting(True, "the product's text length, has description/characteristics")
    monotone: bool = setting(True, "monotone constraints on the probability/rank features")
    exclude_features: list[str] = setting([], "feature names or suffixes left out")
    priors: list[str] = setting([], "lookup-prior keys (prodcat.stacking.priors), e.g. word1, word1+word2, char:Brand")
    priors_train_only: bool = setting(True, "the lookup priors also count the train-only products (every one drawn; "
                                            "none is ever an OOF row, so they count in every fold)")
    hide: dict = setting({}, "MODEL: SHARE - a second set of rankers learns from that share of the training "
                         "products shown without MODEL's predictions and ranks the products MODEL says nothing "
                         "about (id_neighbours on tomorrow's products); the OOF hF1 without it is reported "
                         "(models not stacked are ignored); a model registered with `hide` starts with its "
                         "share (id_neighbours: 1.0)", min=0.0, max=1.0)


REVIEW_ORDERS = ("value", "confidence", "arrival")  # review.order
USES = ("full", "folds")  # how a bag predicts new products: its full child, or the average of its folds
DEFAULT_USE = "folds"  # docs/commands.md "Refit on all products"; measured in docs/results/uhtt_ke.md


@dataclass
class ServeSettings:
    host: str = setting("127.0.0.1", "address the HTTP service binds to (loopback: this machine only)")
    port: int = setting(8000, "TCP port of the HTTP service", min=1, max=65535)
    workers: int = setting(1, "worker processes, each with its own copy of the models (docs/serving.md: memory per "
                              "worker)", min=1)
    use: str = setting(DEFAULT_USE, "each base model's full model or the average of its fold models", choices=USES)
    model: Union[str, None] = setting(None, "stack, average or a base model (null: stack when saved)")
    top: int = setting(3, "alternatives per product when a request does not say", min=1)
    threshold: Union[float, None] = setting(None, "flag needs_review below this confidence, 0 to 1 (null: from "
                                            "min_precision; prodcat.review_rule)")
    min_precision: Union[float, None] = setting(0.98, "flag needs_review below the threshold that reaches this "
                                                "precision on the OOF confidences, 0 < P < 1 (null: flag nothing "
                                                "unless threshold is set)")
    max_batch_items: int = setting(1000, "products in one request at most", min=1)
    max_body_bytes: int = setting(16 * 1024 * 1024, "bytes of one request body at most (chunked bodies too)",
                                  min=1024)
    max_text_chars: int = setting(50_000, "characters of one text field of a product at most", min=1)
    max_photo_pixels: int = setting(40_000_000, "pixels of a photo a request sends at most (width x height; no "
                                    "decompression bombs); photo files are read with this default", min=1)
    predict_threads: int = setting(2, "predictions that run at once (the others wait their turn)", min=1)
    max_category_results: int = setting(100, "leaves one category search returns at most", min=1)
    api_key_file: Union[str, None] = setting(None, "file holding the API key of the write endpoints (the "
                                             "PRODCAT_API_KEY environment variable wins)", path=True)
    reload_on_sighup: bool = setting(True, "SIGHUP loads the models folder again and swaps it in")
    graceful_shutdown_s: int = setting(30, "seconds in-flight requests get to finish at shutdown", min=0)
    client_timeout_s: float = setting(10.0, "seconds a client has to send a whole request, head and body (a slower "
                                      "one is answered 408 and closed)", min=0.1)
    tree: Union[str, None] = setting(None, "a newer category tree (categories_tree.csv layout) the service answers "
                                     "under, read at start and at every reload: leaves matched by id, a prediction "
                                     "into a removed node or one that is no longer a leaf flagged and named, its new "
                                     "leaves suggested and choosable, the review store that tree's (null: the "
                                     "models' own tree)", path=True)


@dataclass
class ZeroShotSettings:
    """Suggestions of the leaves with no or few training products, by their names (prodcat.models.zero_shot)."""

    slots: int = setting(3, "empty leaves among a product's top-N suggestions at most (0: none)", min=0)
    max_products: int = setting(2, "a leaf with at most this many training products is empty", min=0)
    min_score: float = setting(0.3, "an empty leaf is suggested from this cosine score of its names on", min=0.0,
                               max=1.0)
    keep_probability: float = setting(0.1, "the models' alternatives of this probability or more stay ahead of "
                                      "the empty leaves", min=0.0, max=1.0)
    novelty_score: Union[float, None] = setting(None, "flag needs_review when the best empty leaf scores this or "
                                                "more (null: never; measured: it flags ordinary products only)",
                                                min=0.0, max=1.0)
    title_words: int = setting(4, "the product's first title words that are compared (0: the whole title)", min=0)
    path_weight: float = setting(0.1, "weight of the titles above the leaf beside its own title", min=0.0)
    char_ngrams: list[int] = setting([2, 4], "shortest and longest char n-gram (TF-IDF)", min=1)


@dataclass
class ReviewSettings:
    url: str = setting("auto", "database URL of the review store ('auto': SQLite at <workdir>/review/<dataset>/"
                       "review.db; several service replicas share a postgresql+psycopg://USER:PASSWORD@HOST/DB)")
    min_precision: float = setting(0.98, "precision the auto-accepted products must reach (0 < P < 1); the rest are "
                                   "queued for review")
    audit_share: float = setting(0.02, "share of the auto-accepted products also queued (an audit sample, "
                                 "picked by a hash of the product id) to measure their real precision",
                                 min=0.0, max=1.0)
    suggestions: int = setting(5, "top-N suggestions kept per queued product (keys 1-9 accept one)", min=1, max=9)
    claim_ttl_s: int = setting(600, "seconds a reviewer holds a product before another reviewer may get it", min=1)
    dwell_ms: int = setting(300, "milliseconds a product is on the review page before a key press may decide "
                            "it (earlier presses and held keys decide nothing)", min=0)
    order: str = setting("value", "the queue's order: value (the time a decision saves first: confidence / products "
                         "decided with it, so bigger and less certain groups first), confidence (lowest first), "
                         "arrival (as queued); the audit sample stays spread through it (a hash of its id)",
                         choices=REVIEW_ORDERS)
    group_similarity: Union[float, None] = setting(
        0.91, "flagged products whose titles' char 3-gram cosine with a lead's reaches this are decided with it, "
              "one group (null: no groups); the lowest threshold where grouped products share a leaf >= 98% of "
              "the time on 50,000 uhtt_ke training products (./run.sh python bench/bench_groups.py): pairs at "
              ">= 0.91 98.5%, members and their lead 98.0%, 4.1% of the products grouped (0.85: 97.3%, 97.2%, "
              "7.9%)", min=0.01, max=1.0)
    suspects_filter: str = setting("confident_learning", "how `review suspects` finds wrong labels (cleanlab's "
                                   "filter_by)", choices=("confident_learning", "prune_by_noise_rate", "both"))
    suspects_min_probability: float = setting(0.9, "`review suspects` lists a label only when the suggested leaf "
                                              "has at least this OOF probability", min=0.0, max=1.0)
    zero_shot: ZeroShotSettings = setting(ZeroShotSettings, "suggestions of the leaves with no or few training "
                                          "products by their names (predict, the service, review add)")
    reviewers_file: Union[str, None] = setting(None, "reviewers of the service's /review page, one 'NAME KEY' per "
                                               "line (null: no review page; the service then neither queues "
                                               "nor answers from decisions)", path=True)


@dataclass
class FoldSettings:
    k: int = setting(5, "number of folds", min=2)


@dataclass
class TrainOnlySettings:
    file: Union[str, None] = setting(None, "labelled products (the training layout) that only fit the base models "
                                           "(and count in the stacker's lookup priors): never held out, so not in "
                                           "the OOF rows the stacker learns from (relative to the data folder)")
    rows: Union[int, None] = setting(None, "how many of them: a seeded sample (null: all)", min=1)
    models: dict = setting({}, "MODEL: ROWS - that many of them for that model instead of `rows` (more than the "
                               "file holds: all); every sample is the start of one seeded draw, so a smaller "
                               "one is part of a larger one", min=1)
    holdout: int = setting(0, "the last HOLDOUT products of the seeded draw are never given to any model: unseen "
                              "labelled products kept for measuring (bench/bench_refit.py finds them)", min=0)
    once: list[str] = setting([], "base models fitted once, on the train-only products alone: their predictions "
                                  "of every training product are out of sample without folds (one fit, not k); "
                                  "the one child predicts new products for both uses (folds and full)")


@dataclass
class RunSettings:
    data: str = setting("data/flipkart", "dataset folder in the task's layout (--data overrides)", path=True)
    dataset_name: Union[str, None] = setting(None, "name of the outputs' folders (null: the data folder's)")
    workdir: str = setting(".", "where folds/, oof/, models/, ... go (--workdir overrides)", path=True)
    seed: int = setting(42, "seed of folds and models")
    top_k: int = setting(20, "classes stored per product", min=1)
    folds: FoldSettings = setting(FoldSettings, "cross-validation")
    train_only: TrainOnlySettings = setting(TrainOnlySettings, "more labelled products for the base models")
    relabel: Union[str, None] = setting(None, "a changed tree's mapping CSV old_id,new_id (relative to the data "
                                              "folder): every labelled product's leaf mapped before it is checked "
                                              "(./run.sh tree diff OLD NEW lists the changes; null: none)")
    pipeline: list[str] = setting(lambda: [n for n, m in registered().items() if m.pipeline],
                                  "base models run by `all`, in order (a model its data cannot support is skipped)")
    text: TextSettings = setting(TextSettings, "how a product's text is built")
    models: dict = setting({}, "per-model settings; a variant: NAME: {model: BASE, ...}")
    stack: StackSettings = setting(StackSettings, "the LightGBM stacker")
    review: ReviewSettings = setting(ReviewSettings, "the review queue and its decision store")
    serve: ServeSettings = setting(ServeSettings, "the HTTP service (./run.sh serve)")


# -- size rules: settings that depend on how many training products there are ---------------------------
LARGE = 50_000  # products; measured: the demo (800) and uhtt_ke (283,452) want opposite settings
PRIOR_KEYS = ["word1", "word1+word2", "word1+word2+word3", "word2", "last_word", "char:Бренд|Brand",
              "char:Бренд|Brand+word1"]


def size_rules(n_products: int) -> tuple[dict, str]:
    """Settings for a training set of this size, under any config file, and a line saying which rule.

    Below LARGE products the declared defaults hold (tuned on the 800-product demo: many fastText epochs on
    one deterministic thread, a small stacker, no lookup priors - they cost hF1 on few products). From LARGE
    products on (tuned on uhtt_ke, 283k): fastText 5 epochs of a small softmax on all cores, a leaner
    TF-IDF, a bigger stacker trained on up to 250k products, and the lookup priors on."""
    if n_products < LARGE:
        return {}, f"size rule: {n_products:,} training products < {LARGE:,}: the declared defaults"
    rules = {
        "models": {
            "fasttext": {"epoch": 5, "lr": 0.8, "dim": 30, "bucket": 1_000_000, "thread": "auto"},
            "tfidf": {"char_ngrams": [3, 5], "shortlist": 40, "epochs": 5, "lr": 4.0, "prune": 0.05},
        },
        "stack": {"candidates": 8, "num_leaves": 31, "min_data_in_leaf": 100, "max_train_products": 250_000,
                  "num_boost_round": 300, "num_threads": 2, "priors": list(PRIOR_KEYS)},
    }
    return rules, (f"size rule: {n_products:,} training products >= {LARGE:,}: fastText 5 epochs on all cores, "
                   "TF-IDF char 3-5-grams, shortlist 40, 5 epochs, weights pruned below 0.05, "
                   "a 300-round stacker with lookup priors")


# -- checking and resolving -----------------------------------------------------------------------------
def defaults_of(schema) -> dict:
    """The declared defaults of a settings class, as a plain dict (nested classes as dicts)."""
    out = {}
    for f in fields(schema):
        value = f.default if f.default is not MISSING else f.default_factory()
        out[f.name] = defaults_of(type(value)) | _as_dict(value) if is_dataclass(value) else value
    return out


def _as_dict(value) -> dict:
    return {f.name: (_as_dict(getattr(value, f.name)) if is_dataclass(getattr(value, f.name))
                     else getattr(value, f.name)) for f in fields(value)}


def complete(schema, params: dict | None) -> dict:
    """Declared defaults with `params` over them (no checking): what code reads, never a missing key."""
    return deep_merge(defaults_of(schema), params or {})


def deep_merge(base: dict, over: dict) -> dict:
    """`over` merged into a copy of `base`, section by section (OmegaConf's merge of plain containers)."""
    from omegaconf import OmegaConf

    if not over:
        return _copy(base)
    if not base:
        return _copy(over)
    merged = OmegaConf.merge(OmegaConf.create(base), OmegaConf.create(over))
    return OmegaConf.to_container(merged)


def _fail(where: str, key: str, problem: str) -> None:
    raise SettingsError(f"{where}: {key}: {problem}")


def _suggest(key: str, valid) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else f" (valid: {', '.join(sorted(valid))})"


def check(schema, raw, where: str, prefix: str) -> dict:
    """`raw` (one layer: a file's section or --set values) checked against `schema`: unknown keys, types and
    ranges fail with a message naming `where` (the file) and the key path."""
    if not isinstance(raw, dict):
        _fail(where, prefix, f"expected a mapping of settings, got {raw!r}")
    valid = {f.name: f for f in fields(schema)}
    hints = get_type_hints(schema)
    out = {}
    for key, value in raw.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in valid:
            _fail(where, path, "unknown key" + _suggest(str(key), valid))
        f, declared = valid[key], hints[key]
        nested = declared if isinstance(declared, type) and is_dataclass(declared) else None  # e.g. `head`
        out[key] = (check(nested, value, where, path) if nested is not None
                    else _check_value(f, declared, value, where, path))
    return out


def _allowed_types(declared) -> tuple:
    """The Python types a YAML value may have for a declared type (`list[int]` -> list, `Union[int, str]`
    -> int, str; `Optional[X]` admits None)."""
    args = get_args(declared) if get_origin(declared) is Union else (declared,)
    return tuple(get_origin(a) or a for a in args)


def _check_value(f, declared, value, where: str, path: str):
    kinds = _allowed_types(declared)
    meta = f.metadata
    ok = any(_is(value, k) for k in kinds)
    if not ok:
        elem = _list_element(declared)
        names = " or ".join("null" if k is type(None) else f"a list of {elem.__name__}" if k is list and elem
                            else k.__name__ for k in kinds)
        _fail(where, path, f"expected {names}, got {value!r} ({type(value).__name__})")
    items = value if isinstance(value, list) else [value]
    if isinstance(value, dict) and (meta.get("min") is not None or meta.get("max") is not None):
        for key, v in value.items():  # a mapping of numbers (e.g. stack.hide: {MODEL: SHARE})
            if not _is(v, float):
                _fail(where, f"{path}.{key}", f"expected a number, got {v!r}")
            _check_range(meta, v, where, f"{path}.{key}")
        return value
    elem = _list_element(declared) if isinstance(value, list) else None
    for v in items:
        if elem is not None and not _is(v, elem):
            _fail(where, path, f"expected a list of {elem.__name__}, got {value!r}")
        if isinstance(v, str) and meta.get("choices") is not None and v not in meta["choices"]:
            _fail(where, path, f"{v!r} is not allowed (allowed: {', '.join(map(str, meta['choices']))})"
                  + ("" if not isinstance(v, str) else _suggest(v, meta["choices"]).replace("; ", " - ")))
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            _check_range(meta, v, where, path)
    return value


def _check_range(meta: dict, v, where: str, path: str) -> None:
    if meta.get("min") is not None and v < meta["min"]:
        _fail(where, path, f"{v!r} is below the minimum {meta['min']}")
    if meta.get("max") is not None and v > meta["max"]:
        _fail(where, path, f"{v!r} is above the maximum {meta['max']}")


def _list_element(declared):
    """The element type of a declared `list[X]` (None: any element)."""
    lists = [a for a in (get_args(declared) if get_origin(declared) is Union else (declared,)) if get_origin(a) is list]
    elem = get_args(lists[0]) if lists else ()
    return elem[0] if elem and isinstance(elem[0], type) else None


def _is(value, kind) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, kind)


def check_models(raw, where: str) -> dict:
    """The `models:` section of one layer: registered models, or variants `NAME: {model: BASE, ...}`."""
    if not isinstance(raw, dict):
        _fail(where, "models", f"expected a mapping of model names, got {raw!r}")
    out = {}
    for name, section in raw.items():
        path = f"models.{name}"
        if isinstance(section, dict) and "model" in section:
            base = section["model"]
            if base not in MODEL_SPECS:
                _fail(where, f"{path}.model", f"unknown base model {base!r}" + _suggest(str(base), MODEL_SPECS))
            rest = {k: v for k, v in section.items() if k != "model"}
            out[name] = {"model": base} | check(MODEL_SPECS[base].settings, rest, where, path)
        elif name in MODEL_SPECS:
            out[name] = check(MODEL_SPECS[name].settings, section if section is not None else {}, where, path)
        else:
            _fail(where, path, "unknown model (a variant needs `model: BASE`)" + _suggest(str(name), MODEL_SPECS))
    return out


def check_layer(raw, where: str) -> dict:
    """One layer of settings (a config file, the size rules, --set values), checked."""
    if not isinstance(raw, dict):
        _fail(where, "(top)", "a config must be a mapping of sections")
    raw = dict(raw)
    models = raw.pop("models", None)
    out = check(RunSettings, raw, where, "")
    if models is not None:
        out["models"] = check_models(models, where)
    return out


def _leaves(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out |= _leaves(value, path)
        else:
            out[path] = value
    return out


@dataclass
class Resolved:
    """Every setting with its value, where each value came from, and the size rule applied."""

    values: dict
    sources: dict
    note: str

    def table(self) -> list[tuple[str, object, str]]:
        return [(key, value, self.sources.get(key, "default")) for key, value in _leaves(self.values).items()]


def resolve(layers: list[tuple[str, dict]], n_products: int | None = None) -> Resolved:
    """Declared defaults <- size rules <- the layers (files base first, then --set), all checked."""
    values = defaults_of(RunSettings)
    values["models"] = {name: defaults_of(spec.settings) for name, spec in registered().items()}
    values["stack"]["hide"] = {name: spec.hide for name, spec in MODEL_SPECS.items() if spec.hide}
    note = ""
    all_layers = list(layers)
    if n_products is not None:
        rules, note = size_rules(n_products)
        all_layers.insert(0, ("size rule", rules))
    sources: dict = {}
    variants: dict = {}
    for where, raw in all_layers:
        checked = check_layer(raw, where)
        models = checked.pop("models", {})
        for name, section in models.items():
            if name in MODEL_SPECS and "model" not in section:
                values["models"][name] = deep_merge(values["models"][name], section)
            else:
                variants[name] = deep_merge(variants.get(name, {}), section)
            sources |= {k: where for k in _leaves(section, f"models.{name}")}
        values = deep_merge(values, checked)
        sources |= {k: where for k in _leaves(checked)}
    for name, section in variants.items():
        base = section.get("model", name)
        values["models"][name] = deep_merge(values["models"][base], section)
    known = set(values["models"])
    for model in values["pipeline"]:
        if model not in known:
            where = sources.get("pipeline", "default")
            _fail(where, "pipeline", f"unknown model {model!r}" + _suggest(str(model), known))
    for model in values["train_only"]["models"]:
        if model not in known:
            path = f"train_only.models.{model}"
            _fail(sources.get(path, "default"), path, "unknown model" + _suggest(str(model), known))
    for section in ("serve", "review"):  # the review rule, checked where it lives (prodcat.review_rule)
        where = sources.get(f"{section}.min_precision", sources.get(f"{section}.threshold", "default"))
        try:
            ReviewRule(values[section].get("threshold"), values[section]["min_precision"],
                       (f"{section}.threshold", f"{section}.min_precision"), SettingsError)
        except SettingsError as exc:
            raise SettingsError(f"{where}: {exc}") from None
    for model in values["train_only"]["once"]:
        if model not in known:
            _fail(sources.get("train_only.once", "default"), "train_only.once",
                  f"unknown model {model!r}" + _suggest(str(model), known))
        if values["train_only"]["file"] is None:
            _fail(sources.get("train_only.once", "default"), "train_only.once",
                  "a model fitted once fits on the train-only products: set train_only.file too")
    return Resolved(values, sources, note)


def load_layers(path: str | Path) -> list[tuple[str, dict]]:
    """A YAML config and the files it `extends:` (relative to it), base first."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    path = Path(path)
    if not path.exists():
        raise SettingsError(f"{path.resolve()}: config file not found")
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path)) or {}
    except (OmegaConfBaseException, Exception) as exc:  # noqa: BLE001 - YAML errors of any kind
        raise SettingsError(f"{path}: not a valid YAML config: {exc}") from None
    if not isinstance(raw, dict):
        raise SettingsError(f"{path}: a config must be a mapping of sections")
    base = raw.pop("extends", None)
    return (load_layers(path.parent / base) if base else []) + [(str(path), raw)]


def parse_sets(items: list[str] | tuple[str, ...]) -> dict:
    """`--set models.fasttext.epoch=10` (YAML values) as a nested dict."""
    from omegaconf import OmegaConf

    bad = [s for s in items if "=" not in s or not s.split("=", 1)[0].strip()]
    if bad:
        raise SettingsError(f"--set {bad[0]!r}: expected KEY.PATH=VALUE, e.g. --set models.fasttext.epoch=10")
    try:
        sets = OmegaConf.to_container(OmegaConf.from_dotlist(list(items)))
    except Exception as exc:  # noqa: BLE001
        raise SettingsError(f"--set: {exc}") from None
    return with_caller_paths(sets)


def path_settings(schema=None, prefix: str = "") -> list[str]:
    """The dotted keys of the settings declared as paths (`setting(..., path=True)`)."""
    out = []
    for f in fields(schema or RunSettings):
        value = f.default if f.default is not MISSING else f.default_factory()
        if is_dataclass(value):
            out += path_settings(type(value), f"{prefix}{f.name}.")
        elif f.metadata.get("path"):
            out.append(prefix + f.name)
    return out


def with_caller_paths(sets: dict) -> dict:
    """`--set` paths mean what the user typed: relative to the caller's directory (run.sh changes into the
    repository and records where the user was in PRODCAT_CALLER_DIR)."""
    import os

    caller = os.environ.get("PRODCAT_CALLER_DIR")
    for key in path_settings() if caller else []:
        *parents, name = key.split(".")
        section = sets
        for part in parents:
            section = section.get(part) if isinstance(section, dict) else None
        value = section.get(name) if isinstance(section, dict) else None
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
            section[name] = str(Path(caller) / Path(value).expanduser())
    return sets


def load_config(path: str | Path | None = None, sets: dict | None = None, n_products: int | None = None) -> dict:
    """Every setting, resolved (prodcat.settings): declared defaults, size rules for `n_products`, the
    YAML file (and what it `extends:`), then `sets` (--set values); bad keys and values fail here."""
    return resolve_config(path, sets, n_products).values


def resolve_config(path: str | Path | None = None, sets: dict | None = None, n_products: int | None = None):
    layers = load_layers(path or DEFAULT_CONFIG) + ([("--set", sets)] if sets else [])
    return resolve(layers, n_products)


def config_hash(section) -> str:
    """Stable short hash of a config section: outputs made with other settings are not reused."""
    return hashlib.sha1(json.dumps(section, sort_keys=True, default=str).encode()).hexdigest()[:10]
