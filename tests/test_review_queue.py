"""A decision teaches at once: a product a reviewer decided joins the kNN's memory of labelled products in
every worker that reads the store, so the next near-duplicate is predicted with it as with any training
neighbour; an undo forgets it."""
import time

import pytest
from click.testing import CliRunner
from conftest import REPO, write_dataset
from fastapi.testclient import TestClient
from test_serve import wait_ready

from prodcat.cli import main
from prodcat.data.tree import CategoryTree
from prodcat.review.items import QueueItem
from prodcat.review.store import ReviewStore
from prodcat.serve.app import create_app

KEY = "teach-key-0001"


@pytest.fixture(scope="module")
def knn_models(tmp_path_factory):
    """fastText + kNN + stacker on the tiny dataset."""
    tmp = tmp_path_factory.mktemp("teach")
    data = write_dataset(tmp / "tiny")
    cfg = tmp / "knn.yaml"
    cfg.write_text(f"extends: {REPO / 'configs' / 'default.yaml'}\nfolds:\n  k: 3\npipeline: [fasttext, knn]\n"
                   "models:\n  fasttext: {epoch: 30, dim: 16, bucket: 10000, thread: 1}\n  knn: {min_df: 1}\n")
    r = CliRunner().invoke(main, [str(a) for a in ["all", "--data", data, "--config", cfg, "--workdir", tmp / "w"]])
    assert r.exit_code == 0, r.output
    (tmp / "key.txt").write_text(KEY)
    (tmp / "reviewers.txt").write_text("ann annkey-0001\n")
    return tmp / "w" / "models" / "tiny", tmp


def knn_view(client, title: str):
    """The kNN fold models' average for one product, as the service's Predictor computes it."""
    import pandas as pd

    from prodcat.probs import average

    predictor = client.app.state.service.holder.require().predictor
    frame = pd.DataFrame({"id": [10**9], "title": [title], "short_description": [None],
                          "name_value_characteristics": [None]})
    return average(predictor.fold_predictions(frame, ["knn"])["knn"])


def share(top, leaf: int) -> float:
    """The vote share of `leaf` for the one product of a TopK (0 when it is not among them)."""
    hit = top.labels[0] == leaf
    return float(top.scores[0][hit].sum())


def ask(client, title: str) -> dict:
    answer = client.post("/v1/predict", json={"products": [{"id": 10**9, "title": title}], "top": 5,
                                               "threshold": 0.999, "review": True}, headers={"X-API-Key": KEY})
    assert answer.status_code == 200, answer.text
    return answer.json()["predictions"][0]


def test_a_decision_is_a_neighbour_of_the_next_near_duplicate_in_every_worker_at_once(knn_models, tmp_path):
    models, tmp = knn_models
    url = f"sqlite:///{tmp_path / 'review.db'}"
    review = {"reviewers_file": str(tmp / "reviewers.txt"), "url": url}
    settings = {"api_key_file": str(tmp / "key.txt")}
    tree = CategoryTree.from_csv(models / "categories_tree.csv")
    decided, near = "milk dairy bottle kibble brand4", "milk dairy bottle kibble brand4 large"
    with TestClient(create_app(models, settings, review=review)) as one, \
            TestClient(create_app(models, settings, review=review)) as two:  # two workers, one store
        wait_ready(one)
        wait_ready(two)
        ask(one, near)  # the workers have learned the (empty) store once
        ask(two, near)
        before = knn_view(one, near)
        leaf = 24  # wet dog food: what no training product with these words is
        assert before.labels[0, 0] != leaf and before.flags["nearest"][0] < 0.9
        store = ReviewStore(url, models.name, tree)
        store.enqueue([QueueItem(product_id=777, snapshot={"title": decided}, suggestions=[(11, 0.9)],
                                 model_leaf=11, confidence=0.9, model_version="v")])
        store.claim_next("ann")
        stored = time.perf_counter()
        store.decide(777, leaf, "correct", "ann", "teach-1")
        answers = [ask(one, near), ask(two, near)]  # each worker reads the store before predicting
        elapsed = time.perf_counter() - stored
        for client in (one, two):  # a neighbour like any other: its vote joins the training products'
            taught = knn_view(client, near)
            assert share(taught, leaf) > share(before, leaf) and taught.flags["nearest"][0] > 0.9
        assert elapsed < 5  # the next request of each worker already knows it
        assert all(a["source"] == "model" for a in answers)  # another text: predicted, not looked up
        store.undo("ann", "teach-undo-1")  # undone: forgotten by both
        ask(one, near)
        ask(two, near)
        for client in (one, two):
            again = knn_view(client, near)
            assert share(again, leaf) == share(before, leaf) and again.flags["nearest"][0] == before.flags["nearest"][0]
        store.close()
