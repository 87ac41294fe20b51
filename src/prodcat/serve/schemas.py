"""Every request and response body of the service, typed (pydantic): what /openapi.json documents and what
each request is checked against before the products reach `validate_products`.

The request bodies carry the service's limits (text length, products per request), so they are made per
service by `request_models`. (No `from __future__ import annotations` here: pydantic and FastAPI read these
annotations at run time, some of them built from those limits.)
"""
from dataclasses import dataclass
from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag

INT64 = (-(2 ** 63), 2 ** 63 - 1)
PRODUCT_TAG, BATCH_TAG = "product", "batch"  # the two shapes of a prediction request


def _whole(value):
    """A JSON number without a fractional part (`17.0`) is an integer, as JSON Schema says; true, "17" and
    17.5 are not."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


Whole = Annotated[int, BeforeValidator(_whole), Field(strict=True)]
Number = Annotated[Optional[float], Field(strict=True, allow_inf_nan=False)]
Top = Annotated[Optional[Whole], Field(ge=1, description="alternatives per product (default: the service's "
                                                         "`serve.top`)")]
Threshold = Annotated[Optional[float], Field(strict=True, ge=0, le=1, description=(
    "flag needs_review below this confidence (default: the service's review rule)"))]
MinPrecision = Annotated[Optional[float], Field(strict=True, gt=0, lt=1, description=(
    "flag needs_review below the threshold that reaches this precision on the models' out-of-fold "
    "predictions (default: the service's review rule)"))]


@dataclass(frozen=True)
class RequestModels:
    """The request bodies of one service (their limits built in)."""

    product: type  # one product
    batch: type  # {"products": [...], "top": ..., "threshold": ..., "min_precision": ...}
    body: object  # what POST /v1/predict accepts: a product or a batch


def _body_kind(value) -> Optional[str]:
    """Which shape a request body has: a batch holds `products`; any other object is one product."""
    if isinstance(value, dict):
        return BATCH_TAG if "products" in value else PRODUCT_TAG
    if isinstance(value, BaseModel):
        return BATCH_TAG if hasattr(value, "products") else PRODUCT_TAG
    return None


def request_models(max_text_chars: int, max_batch_items: int) -> RequestModels:
    """The request bodies for texts of at most `max_text_chars` characters and batches of at most
    `max_batch_items` products."""
    text = Annotated[Optional[str], Field(strict=True, max_length=max_text_chars)]

    class Product(BaseModel):
        """A product in the task's fields; only `id` is required (absent text or numbers count as empty)."""

        model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
            "id": 325286, "title": "Зарядный кабель Borofone BX1 Lightning для Iphone",
            "short_description": "Кабель для зарядки", "rating": 4.5, "feedback_quantity": 12}]})
        id: Annotated[Whole, Field(ge=INT64[0], le=INT64[1], description="the product's id, echoed")]
        title: text = None
        short_description: text = None
        name_value_characteristics: text = Field(None, description="`name1: v1 | v2 / name2: v1`")
        rating: Number = None
        feedback_quantity: Number = None
        photo: Optional[str] = Field(None, description="the product's photo, base64 (jpg, png, webp, bmp, gif)")

    class PredictBatch(BaseModel):
        """Products to categorise in one request, and how to answer."""

        model_config = ConfigDict(extra="forbid")
        products: list[Product] = Field(min_length=1, max_length=max_batch_items)
        top: Top = None
        threshold: Threshold = None
        min_precision: MinPrecision = None
        review: bool = Field(False, description="queue the products flagged for review (and the audit sample) "
                                                "on the service's review page (API key; needs the review page)")

    body = Annotated[Union[Annotated[PredictBatch, Tag(BATCH_TAG)], Annotated[Product, Tag(PRODUCT_TAG)]],
                     Discriminator(_body_kind, custom_error_type="request_shape",
                                   custom_error_message="expected a product object or {\"products\": [...]}")]
    return RequestModels(Product, PredictBatch, body)


# -- responses -----------------------------------------------------------------------------------------
class Alternative(BaseModel):
    category_id: int
    probability: float
    category_path: str = Field(description="`Top > ... > Leaf` titles")


class Prediction(BaseModel):
    id: int = Field(description="the product's id, as sent")
    predicted_category_id: Optional[int] = Field(description="the decided leaf (null: no model could predict it)")
    confidence: Optional[float] = Field(description="the calibrated probability of that leaf")
    category_path: str
    alternatives: list[Alternative] = Field(description="the top-N leaves, most probable first")
    needs_review: bool = Field(description="confidence under the review threshold of its prediction kind")
    prediction_kind: str = Field(description="which out-of-fold confidences judge it: `all models`, or "
                                             "`without MODEL` where a model had nothing to say")
    source: Literal["model", "review"] = Field("model", description="`review`: a person already decided a "
                                                                   "product with this text (confidence 1)")
    tree_problem: Optional[str] = Field(None, description="under a newer tree (`serve.tree`): why the predicted "
                                        "category cannot be an answer there (removed, or no longer a leaf); "
                                        "such a prediction needs review")


class PredictResponse(BaseModel):
    model_version: str = Field(description="the models that answered (the same for every product of a response)")
    predictions: list[Prediction] = Field(description="one per product, in request order")


class FieldError(BaseModel):
    field: str = Field(description="e.g. `products[17].rating`")
    message: str


class Problem(BaseModel):
    """An error (RFC 9457 problem details, application/problem+json)."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[FieldError] = []


class Health(BaseModel):
    status: Literal["alive", "ready"]
    model_version: Optional[str] = None


class ModelScore(BaseModel):
    model: str
    products: int = Field(description="training products with an out-of-fold prediction kept")
    oof_hf1: float = Field(description="hierarchical F1 of the out-of-fold predictions")
    oof_accuracy: float


class KindThreshold(BaseModel):
    kind: str = Field(description="the prediction kind this threshold judges")
    threshold: Optional[float] = Field(description="null: no threshold reaches the precision (all flagged)")
    expected_coverage: float = Field(description="share of such products auto-accepted (out-of-fold)")
    oof_precision: Optional[float]


class ReviewRule(BaseModel):
    threshold: Optional[float] = Field(description="a fixed confidence threshold (null: from min_precision)")
    min_precision: Optional[float]
    kinds: list[KindThreshold] = Field(description="the threshold of each prediction kind (min_precision)")


class ReloadState(BaseModel):
    state: Literal["idle", "reloading"]
    last_outcome: Optional[str] = Field(None, description="`ok` or why the last reload failed")
    last_at: Optional[str] = None


class Limits(BaseModel):
    max_batch_items: int
    max_body_bytes: int
    max_text_chars: int
    max_photo_pixels: int


class TreeInfo(BaseModel):
    file: Optional[str] = Field(description="the `serve.tree` file answers are given under (null: the models' "
                                            "own tree)")
    fingerprint: str = Field(description="the structure of the tree that answers (ids and parents): the review "
                                         "store's key")
    nodes: int = Field(description="its categories, the root included")
    leaves: int
    models_fingerprint: str = Field(description="the tree the models were trained on")


class Info(BaseModel):
    prodcat_version: str
    model: str = Field(description="stack, average or a base model")
    use: str = Field(description="full (one model trained on every product) or folds (the fold models averaged)")
    model_version: str
    base_models: list[str]
    data_fingerprint: str = Field(description="the training data's content hash the models were made from")
    training_products: Optional[int]
    categories: int = Field(description="categories of the tree that answers (the root excluded)")
    leaves: int
    tree: TreeInfo
    top_k: int = Field(description="classes kept per product (the most `top` can ask)")
    oof_scores: list[ModelScore]
    review: ReviewRule
    limits: Limits
    loaded_at: str
    load_seconds: float
    reload: ReloadState


class Category(BaseModel):
    id: int
    title: str
    parent_id: Optional[int]
    is_leaf: bool
    path: str


class Categories(BaseModel):
    total: int = Field(description="categories that match (before the limit)")
    categories: list[Category]


class Reloaded(BaseModel):
    status: Literal["reloaded", "reloading workers"]
    model_version: Optional[str] = Field(description="the models now answering (null: workers restart one by one)")
    previous_version: Optional[str]
    load_seconds: Optional[float]
