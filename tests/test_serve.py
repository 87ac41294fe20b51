"""The HTTP service: every endpoint, each bad input a client can send (one problem+json answer naming the
field and the product, never a 500), the API key, readiness before the models are in, the same answers as
`./run.sh predict`, reloads that drop no request, a real uvicorn process, and a schemathesis fuzz pass over
the OpenAPI document."""
import base64
import importlib
import io
import json
import logging
import os
import pkgutil
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pandas as pd
import pytest
import schemathesis
from click.testing import CliRunner
from conftest import REPO, write_dataset
from fastapi.testclient import TestClient
from schemathesis.specs.openapi import schemas as _openapi_schemas  # noqa: F401 - see below

from prodcat.cli import main
from prodcat.errors import DataError
from prodcat.serve.app import create_app
from prodcat.serve.loading import load_models

# schemathesis is a pytest plugin, so pytest parses its modules into Python ASTs (assertion rewriting) when they
# are first imported - those it imports lazily while generating cases too; importing every one of them here,
# at collection, keeps that off the moment the service's threads run:
# CPython 3.11 can fail an AST parse under threads ("SystemError: AST constructor recursion depth mismatch",
# python/cpython#106905), seen twice in this module's fuzz test.
for _module in pkgutil.walk_packages(schemathesis.__path__, "schemathesis."):
    try:
        importlib.import_module(_module.name)
    except Exception:  # noqa: BLE001 - a part for an optional dependency that is not installed
        pass
KEY = "s3cret-key"
SECRET_TEXT = "SECRET-PRODUCT-TEXT"  # must never reach the log or an error answer
JSON = {"content-type": "application/json"}


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """fastText + TF-IDF + stacker (fold and full models) on the tiny dataset, trained once for this module:
    (the common CLI options, the models folder, a temp folder)."""
    tmp = tmp_path_factory.mktemp("serve")
    tiny = write_dataset(tmp / "tiny")
    cfg = tmp / "both.yaml"
    cfg.write_text(f"extends: {REPO / 'configs' / 'default.yaml'}\nfolds:\n  k: 3\npipeline: [fasttext, tfidf]\n"
                   "models:\n  fasttext:\n    epoch: 50\n    lr: 0.5\n    dim: 16\n    bucket: 10000\n    thread: 1\n")
    common = ["--data", tiny, "--config", cfg, "--workdir", tmp / "w"]
    r = invoke("all", "--refit", *common)
    assert r.exit_code == 0, r.output
    (tmp / "key.txt").write_text(KEY + "\n")
    return common, tmp / "w" / "models" / "tiny", tmp


def wait_until(condition, seconds: float = 30) -> None:
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, "waited in vain"
        time.sleep(0.05)


def wait_ready(client, seconds: float = 30) -> None:
    wait_until(lambda: client.get("/health/ready").status_code == 200, seconds)


def wait_serving(url: str, process, seconds: float = 60) -> None:
    """A real server process at `url` answers /health/ready with 200 (one that exited: its output is shown)."""
    import httpx

    deadline = time.time() + seconds
    while True:
        try:
            if httpx.get(f"{url}/health/ready").status_code == 200:
                return
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            raise AssertionError(f"the server did not start: {process.stdout.read()[-3000:]}")
        assert time.time() < deadline, "the server did not get ready"
        time.sleep(0.2)


class SwitchableLoader:
    """load_models, unless a test makes it wait or fail."""

    def __init__(self):
        self.gate, self.failure = threading.Event(), None
        self.gate.set()

    def __call__(self, models_dir, settings):
        self.gate.wait(30)
        if self.failure is not None:
            raise self.failure
        return load_models(models_dir, settings)


@pytest.fixture(scope="module")
def loader():
    return SwitchableLoader()


@pytest.fixture(scope="module")
def client(served, loader):
    """The service with its default limits and an API key file."""
    _, models, tmp = served
    with TestClient(create_app(models, {"api_key_file": str(tmp / "key.txt")}, loader=loader)) as c:
        wait_ready(c)
        yield c


@pytest.fixture(scope="module")
def small(served):
    """The service with small limits and no API key."""
    _, models, _ = served
    limits = {"max_body_bytes": 4096, "max_batch_items": 5, "max_text_chars": 100, "max_photo_pixels": 400}
    with TestClient(create_app(models, limits)) as c:
        wait_ready(c)
        yield c


def json_products(path) -> list[dict]:
    """The products of a parquet file as JSON objects (absent values as null)."""
    frame = pd.read_parquet(path)
    return [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}
            for row in json.loads(frame.to_json(orient="records"))]


def png(width: int = 8, height: int = 8) -> bytes:
    from PIL import Image

    noise = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)  # does not compress
    out = io.BytesIO()
    Image.fromarray(noise, "RGB").save(out, format="PNG")
    return out.getvalue()


def assert_problem(response, status: int, field: str | None = None, message: str = "") -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert {"type", "title", "status", "detail", "errors"} <= set(body) and body["status"] == status
    assert "Traceback" not in response.text and SECRET_TEXT not in response.text
    if field is not None:
        assert any(e["field"] == field and message in e["message"] for e in body["errors"]), body
        assert field in body["detail"]
    return body


# -- predicting --------------------------------------------------------------------------------------------
def test_one_product_and_a_batch_are_categorised_with_ids_echoed(client, served):
    one = client.post("/v1/predict", json={"id": 7, "title": "dog dry kibble brand1"})
    assert one.status_code == 200, one.text
    body = one.json()
    assert len(body["predictions"]) == 1 and body["model_version"] == client.get("/v1/info").json()["model_version"]
    p = body["predictions"][0]
    assert p["id"] == 7 and p["predicted_category_id"] == 23 and p["category_path"] == "Pets > Dog food > Dry"
    assert [a["category_id"] for a in p["alternatives"]][0] == 23 and len(p["alternatives"]) == 3
    assert 0 <= p["confidence"] <= 1 and isinstance(p["needs_review"], bool) and p["prediction_kind"] == "all models"
    batch = client.post("/v1/predict", json={"products": [{"id": 5, "title": "milk dairy bottle"}, {"id": -3},
                                                          {"id": 2 ** 40, "title": "cat kitten food"}], "top": 2})
    assert batch.status_code == 200, batch.text
    got = batch.json()["predictions"]
    assert [p["id"] for p in got] == [5, -3, 2 ** 40] and all(len(p["alternatives"]) == 2 for p in got)
    assert got[0]["category_path"] == "Food > Milk" and got[2]["predicted_category_id"] == 21


def test_the_service_answers_what_the_predict_command_writes(client, served, tmp_path):
    common, models, tmp = served
    test_file = tmp / "tiny" / "test.parquet"
    out = tmp_path / "pred.parquet"
    # the service's default review rule (serve.min_precision 0.98), then a request's own threshold and top
    for flags, request in ((["--min-precision", "0.98"], {}),
                           (["--threshold", "0.9", "--top", "4"], {"threshold": 0.9, "top": 4})):
        r = invoke("predict", "--models", models, "--input", test_file, "--out", out, *flags)
        assert r.exit_code == 0, r.output
        expected = pd.read_parquet(out)
        response = client.post("/v1/predict", json={"products": json_products(test_file)} | request)
        assert response.status_code == 200, response.text
        got = response.json()["predictions"]
        top = request.get("top", 3)
        assert [p["id"] for p in got] == expected["id"].tolist()
        assert [p["predicted_category_id"] for p in got] == expected["predicted_category_id"].tolist()
        assert np.array_equal(np.array([p["confidence"] for p in got], np.float32), expected["confidence"].to_numpy())
        assert [p["category_path"] for p in got] == expected["category_path"].tolist()
        assert [p["needs_review"] for p in got] == expected["needs_review"].tolist()
        assert [p["prediction_kind"] for p in got] == expected["prediction_kind"].tolist()
        for j in range(top):
            assert [p["alternatives"][j]["category_id"] for p in got] == expected[f"top{j + 1}_category_id"].tolist()
            assert np.array_equal(np.array([p["alternatives"][j]["probability"] for p in got], np.float32),
                                  expected[f"top{j + 1}_probability"].to_numpy())


# -- bad input: one problem+json answer naming the field and the product -----------------------------------
def batch_with(bad: dict, at: int = 17, n: int = 18) -> dict:
    products = [{"id": i, "title": f"{SECRET_TEXT} milk"} for i in range(n)]
    products[at] = {"id": at, "title": SECRET_TEXT} | bad
    return {"products": products}


@pytest.mark.parametrize("body, status, field, message", [
    (batch_with({"rating": "4 stars"}), 422, "products[17].rating", "expected a number"),
    (batch_with({"rating": True}), 422, "products[17].rating", "expected a number"),
    (batch_with({"feedback_quantity": float("inf")}), 422, "products[17].feedback_quantity", "finite"),
    (batch_with({"title": 42}), 422, "products[17].title", "expected text"),
    (batch_with({"id": "17"}), 422, "products[17].id", "expected a whole number"),
    (batch_with({"id": 2 ** 70}), 422, "products[17].id", "at most"),
    (batch_with({"tittle": "x"}), 422, "products[17].tittle", "unknown field"),
    (batch_with({"image_path": "/etc/passwd"}), 422, "products[17].image_path", "unknown field"),
    ({"products": [{"id": 1}, {"title": SECRET_TEXT}]}, 422, "products[1].id", "required"),
    ({"title": SECRET_TEXT}, 422, "product.id", "required"),
    ({"id": 1, "rating": SECRET_TEXT}, 422, "product.rating", "expected a number"),
    ({"products": [{"id": 4}, {"id": 5}, {"id": 4}]}, 422, "products[2].id", "duplicate ids"),
    ({"products": []}, 422, "products", "at least one"),
    ({"products": "all"}, 422, "products", "expected a list"),
    ([{"id": 1}], 422, "body", "expected a product object"),
    ({"products": [{"id": 1}], "top": 0}, 422, "top", "at least 1"),
    ({"products": [{"id": 1}], "top": 21}, 400, None, "the saved models keep 20 classes"),
    ({"products": [{"id": 1}], "min_precision": 1.0}, 422, "min_precision", "below 1"),
    ({"products": [{"id": 1}], "threshold": 0.5, "min_precision": 0.9}, 400, None, "not both"),
    ({"id": 1, "photo": base64.b64encode(b"%PDF-1.4 not a photo").decode()}, 422, "product.photo", "not an image"),
    (batch_with({"photo": "***"}, at=3), 422, "products[3].photo", "not base64"),
    (batch_with({"photo": base64.b64encode(png(32, 32)[:1500]).decode()}, at=2), 422, "products[2].photo",
     "damaged or truncated"),
])
def test_bad_input_is_one_clear_problem(client, body, status, field, message, caplog):
    with caplog.at_level(logging.INFO, logger="prodcat"):  # json.dumps writes Infinity, as some clients do
        response = client.post("/v1/predict", content=json.dumps(body), headers=JSON)
    problem = assert_problem(response, status, field, message)
    assert message in problem["detail"]
    assert SECRET_TEXT not in caplog.text and "POST /v1/predict %d" % status in caplog.text


def test_malformed_json_names_the_position(client):
    problem = assert_problem(client.post("/v1/predict", content=b'{"id": 1, "title": "x",}',
                                         headers=JSON), 400, "body", "malformed JSON")
    assert "character" in problem["detail"]


def test_a_body_that_is_not_json_says_so(client):
    for content_type in ("application/x-www-form-urlencoded", "text/plain"):  # curl -d without -H, ...
        response = client.post("/v1/predict", content=b'{"id": 1}', headers={"content-type": content_type})
        assert_problem(response, 422, "body", "expected a JSON body (Content-Type: application/json)")
    not_utf8 = client.post("/v1/predict", content=b'{"id": 1, "title": "\xff\xfe"}', headers=JSON)
    assert "send JSON as UTF-8 text" in assert_problem(not_utf8, 400)["detail"]
    lone = client.post("/v1/predict", content=b'{"id": 1, "title": "\\ud800"}', headers=JSON)  # a lone surrogate
    assert_problem(lone, 422, "product.title", "not valid Unicode text")


def test_a_10_mb_text_field_is_named_not_read(client):
    ten_mb = "x" * 10_000_000
    response = client.post("/v1/predict", json={"products": [{"id": 1}, {"id": 2, "short_description": ten_mb}]})
    assert_problem(response, 422, "products[1].short_description", "longer than 50000 characters")


def test_limits_of_batch_size_body_size_text_and_photo_pixels(small):
    assert_problem(small.post("/v1/predict", json={"products": [{"id": i} for i in range(6)]}), 422, "products",
                   "more than 5 products")
    assert_problem(small.post("/v1/predict", json={"id": 1, "title": "x" * 101}), 422, "product.title",
                   "longer than 100 characters")
    big = json.dumps({"id": 1, "title": "x" * 5000}).encode()
    too_large = assert_problem(small.post("/v1/predict", content=big, headers=JSON),
                               413)
    assert "at most 4,096 bytes" in too_large["detail"] and "5,0" in too_large["detail"]  # Content-Length seen

    def chunks():  # no Content-Length: counted as it streams
        yield b'{"id": 1, "title": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    streamed = small.post("/v1/predict", content=chunks(), headers=JSON)
    assert "passed 4,096 bytes" in assert_problem(streamed, 413)["detail"]
    photo = base64.b64encode(png(21, 20)).decode()
    assert_problem(small.post("/v1/predict", json={"id": 1, "photo": photo}), 422, "product.photo",
                   "21 x 20 pixels is over the limit of 400")
    assert small.post("/v1/predict", json={"id": 1, "photo": base64.b64encode(png(20, 20)).decode()}).status_code == 200


def decompression_bomb() -> bytes:
    """A PNG whose header claims 100,000 x 100,000 pixels (its pixel data is not even there)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 100))
            + chunk(b"IEND", b""))


def test_a_decompression_bomb_is_refused_before_decoding(client):
    response = client.post("/v1/predict", json={"id": 1, "photo": base64.b64encode(decompression_bomb()).decode()})
    assert_problem(response, 422, "product.photo", "over the limit")


def test_photos_reach_the_models_as_temporary_files_removed_after_the_request(client, monkeypatch):
    import prodcat.serve.routes as routes

    seen = []

    def spy(models, frame, ask, keep=0):
        seen.append([(p, os.path.isfile(p)) if isinstance(p, str) else None for p in frame["image_path"].tolist()])
        return answer(models, frame, ask, keep)

    answer = routes.answer
    monkeypatch.setattr(routes, "answer", spy)
    upload = client.post("/v1/predict/upload", data={"product": json.dumps({"id": 3, "title": "cat kitten food"}),
                                                     "top": "2"}, files={"photo": ("p.png", png(), "image/png")})
    assert upload.status_code == 200, upload.text
    assert upload.json()["predictions"][0]["id"] == 3 and len(upload.json()["predictions"][0]["alternatives"]) == 2
    in_json = client.post("/v1/predict", json={"products": [{"id": 1, "photo": base64.b64encode(png()).decode()},
                                                            {"id": 2}]})
    assert in_json.status_code == 200, in_json.text
    (upload_path, existed), = seen[0]
    assert existed and upload_path.endswith(".png") and not os.path.exists(upload_path)
    assert seen[1][0][1] and seen[1][1] is None and not os.path.exists(seen[1][0][0])
    not_image = client.post("/v1/predict/upload", data={"product": json.dumps({"id": 3})},
                            files={"photo": ("p.png", b"GIF89a but not really", "image/png")})
    assert_problem(not_image, 422, "product.photo", "not an image")
    assert_problem(client.post("/v1/predict/upload", data={"product": '{"id": 3,'}), 400, "product", "malformed JSON")
    assert_problem(client.post("/v1/predict/upload", data={"product": '{"id": "x"}'}), 422, "product.id")


# -- the API key ---------------------------------------------------------------------------------------------
def test_write_endpoints_need_the_api_key(client, small):
    missing = assert_problem(client.post("/v1/reload"), 401)
    assert "X-API-Key" in missing["detail"] and "ApiKey" in client.post("/v1/reload").headers["www-authenticate"]
    assert "wrong API key" in assert_problem(client.post("/v1/reload", headers={"X-API-Key": KEY + "x"}), 403)["detail"]
    assert "no API key" in assert_problem(small.post("/v1/reload", headers={"X-API-Key": KEY}), 403)["detail"]
    right = client.post("/v1/reload", headers={"X-API-Key": KEY})
    assert right.status_code == 200, right.text
    assert right.json()["status"] == "reloaded" and right.json()["model_version"] == right.json()["previous_version"]


def test_the_key_comes_from_the_environment_else_the_key_file(tmp_path, monkeypatch):
    from prodcat.errors import SettingsError
    from prodcat.serve.security import API_KEY_ENV, configured_key

    monkeypatch.delenv(API_KEY_ENV, raising=False)
    (tmp_path / "k").write_text("from-file\n")
    assert configured_key({"api_key_file": str(tmp_path / "k")}) == "from-file"
    assert configured_key({"api_key_file": None}) is None
    monkeypatch.setenv(API_KEY_ENV, "from-env")
    assert configured_key({"api_key_file": str(tmp_path / "k")}) == "from-env"
    monkeypatch.delenv(API_KEY_ENV)
    with pytest.raises(SettingsError, match="serve.api_key_file: .*missing"):
        configured_key({"api_key_file": str(tmp_path / "missing")})
    (tmp_path / "empty").write_text("  \n")
    with pytest.raises(SettingsError, match="is empty"):
        configured_key({"api_key_file": str(tmp_path / "empty")})


# -- readiness and reloads -----------------------------------------------------------------------------------
def test_not_ready_until_the_models_are_loaded(served):
    _, models, _ = served
    slow = SwitchableLoader()
    slow.gate.clear()
    with TestClient(create_app(models, {}, loader=slow)) as c:
        assert c.get("/health/live").json() == {"status": "alive", "model_version": None}
        assert "still loading" in assert_problem(c.get("/health/ready"), 503)["detail"]
        assert_problem(c.post("/v1/predict", json={"id": 1}), 503)
        assert_problem(c.get("/v1/info"), 503)
        slow.gate.set()
        wait_ready(c)
        assert c.post("/v1/predict", json={"id": 1}).status_code == 200


def test_a_models_folder_that_fails_to_load_is_named_and_reload_fixes_it(served, tmp_path):
    _, models, _ = served
    (tmp_path / "key").write_text(KEY)
    broken = SwitchableLoader()
    broken.failure = DataError("models/x/tfidf/fold1/model.bin: damaged or incomplete model file")
    with TestClient(create_app(models, {"api_key_file": str(tmp_path / "key")}, loader=broken)) as c:
        wait_until(lambda: "damaged" in c.get("/health/ready").text)
        assert "damaged or incomplete" in assert_problem(c.post("/v1/predict", json={"id": 1}), 503)["detail"]
        broken.failure = None
        assert c.post("/v1/reload", headers={"X-API-Key": KEY}).json()["previous_version"] is None
        assert c.get("/health/ready").status_code == 200


def test_a_reload_drops_no_request_and_a_failed_one_keeps_the_old_models(client, loader):
    version = client.get("/v1/info").json()["model_version"]
    answers, stop = [], threading.Event()

    def keep_asking():
        while not stop.is_set():
            answers.append(client.post("/v1/predict", json={"products": [{"id": 1, "title": "milk"}, {"id": 2}]}))

    askers = [threading.Thread(target=keep_asking) for _ in range(3)]
    for t in askers:
        t.start()
    loader.gate.clear()  # the reload waits while requests keep coming
    reload = []
    reloading = threading.Thread(target=lambda: reload.append(client.post("/v1/reload", headers={"X-API-Key": KEY})))
    reloading.start()
    wait_until(lambda: client.get("/v1/info").json()["reload"]["state"] == "reloading")
    assert_problem(client.post("/v1/reload", headers={"X-API-Key": KEY}), 409)  # one reload at a time
    before = len(answers)
    wait_until(lambda: len(answers) >= before + 10)  # answered while the reload waits
    loader.gate.set()
    reloading.join()
    time.sleep(0.2)
    stop.set()
    for t in askers:
        t.join()
    assert reload[0].status_code == 200 and reload[0].json()["model_version"] == version
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200]
    loader.failure = DataError("the stacker was fitted on other tfidf fold models than the saved ones")
    try:
        failed = assert_problem(client.post("/v1/reload", headers={"X-API-Key": KEY}), 422)
    finally:
        loader.failure = None
    assert failed["title"].startswith("reload failed") and "stacker was fitted" in failed["detail"]
    assert client.get("/v1/info").json()["reload"]["last_outcome"].startswith("failed: the stacker")
    assert client.post("/v1/predict", json={"id": 1}).json()["model_version"] == version


# -- what the models say about themselves --------------------------------------------------------------------
def test_info_names_the_models_their_data_scores_and_review_rule(client, served):
    from prodcat.training.run import Run
    from prodcat.training.scores import comparison_predictions, comparison_table

    common, models, _ = served
    info = client.get("/v1/info").json()
    stacker = json.loads((models / "stack" / "stacker.json").read_text())
    assert info["model"] == "stack" and info["use"] == "folds" and info["base_models"] == ["fasttext", "tfidf"]
    assert info["data_fingerprint"] == stacker["data"] and len(info["model_version"]) == 12
    assert info["training_products"] == 120 and info["categories"] == 8 and info["leaves"] == 5
    run = Run.open(common[1], common[3], common[5])
    table = comparison_table(run, comparison_predictions(run)).set_index("model")
    scores = {row["model"]: row for row in info["oof_scores"]}
    assert set(scores) == {"fasttext", "tfidf", "stack"}
    for name, row in scores.items():  # the numbers ./run.sh scores prints
        assert row["oof_hf1"] == pytest.approx(table.loc[name, "hF1"]) and row["products"] == 120
        assert row["oof_accuracy"] == pytest.approx(table.loc[name, "accuracy"])
    review = info["review"]
    assert review["min_precision"] == 0.98 and review["kinds"][0]["kind"] == "all models"
    assert set(review["kinds"][0]) == {"kind", "threshold", "expected_coverage", "oof_precision"}
    assert info["limits"]["max_batch_items"] == 1000 and info["reload"]["state"] == "idle"


def test_full_models_are_another_version(served):
    _, models, _ = served
    with TestClient(create_app(models, {"use": "full", "threshold": 0.5, "min_precision": None})) as c:
        wait_ready(c)
        info = c.get("/v1/info").json()
        assert info["use"] == "full" and info["review"] == {"threshold": 0.5, "min_precision": None, "kinds": []}
        assert c.post("/v1/predict", json={"id": 1, "title": "milk"}).json()["model_version"] == info["model_version"]
    with TestClient(create_app(models, {})) as c:
        wait_ready(c)
        assert c.get("/v1/info").json()["model_version"] != info["model_version"]


def test_categories_the_tree_and_a_search_of_leaf_paths(client):
    tree = client.get("/v1/categories").json()
    assert tree["total"] == 9 and len(tree["categories"]) == 9
    dry = next(c for c in tree["categories"] if c["id"] == 23)
    assert dry == {"id": 23, "title": "Dry", "parent_id": 22, "is_leaf": True, "path": "Pets > Dog food > Dry"}
    assert next(c for c in tree["categories"] if c["id"] == 1)["parent_id"] is None
    assert [c["id"] for c in client.get("/v1/categories", params={"q": "dog"}).json()["categories"]] == [23, 24]
    assert [c["id"] for c in client.get("/v1/categories", params={"q": "PETS wet"}).json()["categories"]] == [24]
    limited = client.get("/v1/categories", params={"q": "food", "limit": 1}).json()
    assert limited["total"] == 5 and len(limited["categories"]) == 1  # Food > ..., Cat food, Dog food > ...
    assert client.get("/v1/categories", params={"q": "pizza"}).json() == {"total": 0, "categories": []}
    assert_problem(client.get("/v1/categories", params={"q": "x" * 201}), 422, "q")
    assert_problem(client.get("/v1/categories", params={"limit": 0}), 422, "limit")


def test_openapi_types_every_request_and_response(client):
    doc = client.get("/openapi.json").json()
    ops = {(path, method): op for path, item in doc["paths"].items() for method, op in item.items()}
    assert {("/v1/predict", "post"), ("/v1/predict/upload", "post"), ("/v1/info", "get"), ("/v1/categories", "get"),
            ("/v1/reload", "post"), ("/health/live", "get"), ("/health/ready", "get")} == set(ops)
    for (path, method), op in ops.items():
        assert "$ref" in op["responses"]["200"]["content"]["application/json"]["schema"], path
        for status, answer in op["responses"].items():
            if status != "200":
                schema = answer["content"]["application/problem+json"]["schema"]
                assert schema["$ref"].endswith("/Problem"), (path, status)
    body = ops[("/v1/predict", "post")]["requestBody"]["content"]["application/json"]["schema"]
    assert len(body["oneOf"]) == 2
    product = doc["components"]["schemas"]["Product"]
    assert product["required"] == ["id"] and product["properties"]["title"]["anyOf"][0]["maxLength"] == 50000
    assert doc["components"]["schemas"]["PredictBatch"]["properties"]["products"]["maxItems"] == 1000
    assert ops[("/v1/reload", "post")]["security"] == [{"APIKeyHeader": []}]


def test_one_log_line_per_request_and_prometheus_metrics(client, caplog):
    with caplog.at_level(logging.INFO, logger="prodcat"):
        client.post("/v1/predict", json={"products": [{"id": 1, "title": SECRET_TEXT}, {"id": 2}]})
    lines = [r.getMessage() for r in caplog.records if r.name == "prodcat.serve"]
    assert len(lines) == 1 and lines[0].startswith("POST /v1/predict 200 items=2 ") and lines[0].endswith("ms")
    assert SECRET_TEXT not in caplog.text
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'prodcat_requests_total{method="POST",route="/v1/predict",status="200"}' in text
    assert 'prodcat_requests_total{method="POST",route="/v1/predict",status="422"}' in text
    assert 'prodcat_request_seconds_bucket{le="0.05",route="/v1/predict"}' in text
    predicted = float(text.split("\nprodcat_products_predicted_total ")[1].split()[0])
    flagged = float(text.split("\nprodcat_products_flagged_total ")[1].split()[0])
    assert predicted >= 2 and 0 <= flagged <= predicted
    assert 'prodcat_model_loads_total{outcome="ok"}' in text


# -- the fuzz pass ---------------------------------------------------------------------------------------------
TAKING_INPUT = ("POST /v1/predict", "POST /v1/predict/upload", "GET /v1/categories")


def test_a_schemathesis_fuzz_pass_over_the_openapi_document_finds_no_500(client):
    """Every operation of /openapi.json with schema-conforming and schema-breaking requests (a bounded number
    of each, derandomized): 4xx problems at worst, never a server error."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    answered = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @settings(max_examples=25, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode, headers={"X-API-Key": KEY}))
            def call(case):
                response = case.call()
                answered.setdefault(operation.label, set()).add(response.status_code)
                assert response.status_code < 500, (case.body, response.text)
                if response.status_code >= 400:  # schemathesis lists each header's values
                    assert response.headers["content-type"] == ["application/problem+json"], response.text

            try:
                call()
            except Unsatisfiable:  # an operation that takes no input has no request that breaks its schema
                assert mode == GenerationMode.NEGATIVE and operation.label not in TAKING_INPUT
    assert len(answered) == 7 and 200 in answered["POST /v1/predict"] and 422 in answered["POST /v1/predict"]


# -- a real uvicorn process ---------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chunked_post(port: int, path: str, chunks) -> bytes:
    """A POST with Transfer-Encoding: chunked (no Content-Length) over a raw socket; the raw answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  "Transfer-Encoding: chunked\r\n\r\n".encode())
        try:
            for chunk in chunks:
                s.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            s.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server answered and closed before the whole body was sent
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
        return answer


def test_a_real_uvicorn_process_serves_reloads_and_stops_gracefully(served):
    import httpx

    _, models, _ = served
    port = free_port()
    env = os.environ | {"PYTHONPATH": str(REPO / "src"), "PRODCAT_API_KEY": KEY}
    server = subprocess.Popen([sys.executable, "-m", "prodcat", "serve", "--models", str(models), "--port", str(port),
                               "--set", "serve.max_body_bytes=4000000"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_serving(url, server)
        answer = httpx.post(f"{url}/v1/predict", json={"id": 1, "title": "dog wet can"})
        assert answer.status_code == 200 and answer.json()["predictions"][0]["predicted_category_id"] == 24
        raw = chunked_post(port, "/v1/predict", [b'{"id": 1, "title": "'] + [b"x" * 500_000] * 10)
        assert raw.startswith(b"HTTP/1.1 413") and b"application/problem+json" in raw and b"passed 4,000,000" in raw
        assert httpx.post(f"{url}/v1/predict", content=b"x" * 5_000_000).status_code == 413
        assert httpx.post(f"{url}/v1/reload", headers={"X-API-Key": KEY}).json()["status"] == "reloaded"
        server.send_signal(signal.SIGHUP)  # the reload runs in the background while requests keep being answered
        assert httpx.post(f"{url}/v1/predict", json={"id": 2}).status_code == 200
        wait_until(lambda: 'prodcat_model_loads_total{outcome="ok"} 3.0' in httpx.get(f"{url}/metrics").text)
        heavy = {"products": [{"id": i, "title": f"dog food {i}", "short_description": f"word{i} " * 200}
                              for i in range(1000)]}
        in_flight = []
        asking = threading.Thread(target=lambda: in_flight.append(httpx.post(f"{url}/v1/predict", json=heavy,
                                                                             timeout=60)))
        asking.start()
        time.sleep(0.3)
        server.send_signal(signal.SIGTERM)  # graceful: the request in flight is answered
        asking.join()
        assert in_flight[0].status_code == 200 and len(in_flight[0].json()["predictions"]) == 1000
        assert server.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has shut down
    finally:
        if server.poll() is None:
            server.kill()
    log = server.stdout.read()
    assert "POST /v1/predict 200 items=1 " in log and "POST /v1/predict 413 items=0" in log
    assert log.count("(replacing ") == 2 and "Traceback" not in log and "Finished server process" in log


# -- the command line ----------------------------------------------------------------------------------------
def test_serve_checks_its_arguments_before_starting(served, tmp_path):
    _, models, _ = served
    r = invoke("serve", "--models", tmp_path / "nothing")
    assert r.exit_code == 1 and "no saved models here" in r.output and "Traceback" not in r.output
    r = invoke("serve", "--models", models, "--port", "70000")
    assert r.exit_code == 2 and "--port" in r.output
    r = invoke("serve", "--models", models, "--set", "serve.max_batch_items=0")
    assert r.exit_code == 1 and "serve.max_batch_items: 0 is below the minimum 1" in r.output
    r = invoke("serve", "--models", models, "--set", "serve.threshold=0.5")
    assert r.exit_code == 1 and "give one of them" in r.output
    r = invoke("serve", "--models", models, "--set", "serve.min_precision=1.0")
    assert r.exit_code == 1 and "serve.min_precision: 1.0 must be between 0 and 1, both excluded" in r.output
    r = invoke("serve", "--models", models, "--set", f"serve.api_key_file={tmp_path / 'no-key'}")
    assert r.exit_code == 1 and "serve.api_key_file" in r.output


def test_a_service_that_cannot_answer_does_not_start(served, tmp_path):
    """`serve --use full` on models without full children (./run.sh all without --refit): the process exits
    at once saying what to run, instead of binding the port and answering 503 forever."""
    _, models, _ = served
    copy = tmp_path / "models"
    shutil.copytree(models, copy)
    for full in copy.glob("*/full"):
        shutil.rmtree(full)
    start = time.time()
    proc = subprocess.run([str(REPO / "run.sh"), "serve", "--models", str(copy), "--use", "full",
                           "--port", str(free_port())], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and time.time() - start < 60, proc.stderr
    assert "./run.sh refit" in proc.stdout + proc.stderr and "Traceback" not in proc.stdout + proc.stderr
    assert "Uvicorn running" not in proc.stderr


def test_several_workers_reload_in_place_when_asked(served):
    """--workers 2: POST /v1/reload tells every registered worker (SIGUSR1); each loads the models again in
    place and keeps answering."""
    import httpx

    _, models, _ = served
    port = free_port()
    env = os.environ | {"PYTHONPATH": str(REPO / "src"), "PRODCAT_API_KEY": KEY}
    server = subprocess.Popen([sys.executable, "-m", "prodcat", "serve", "--models", str(models), "--port", str(port),
                               "--workers", "2"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    loads = 'prodcat_model_loads_total{outcome="ok"} '
    try:
        def ready() -> bool:
            try:
                return f"{loads}2.0" in httpx.get(f"{url}/metrics").text  # both workers loaded
            except httpx.TransportError:
                assert server.poll() is None, "the server stopped"
                return False

        wait_until(ready, 90)
        answer = httpx.post(f"{url}/v1/reload", headers={"X-API-Key": KEY})
        assert answer.status_code == 202 and answer.json()["status"] == "reloading workers"
        wait_until(lambda: f"{loads}4.0" in httpx.get(f"{url}/metrics").text, 90)
        assert httpx.post(f"{url}/v1/predict", json={"id": 1, "title": "dog wet can"}).status_code == 200
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
    log = server.stdout.read()
    assert log.count("(replacing ") == 2 and "Traceback" not in log, log[-3000:]
