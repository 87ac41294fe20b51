"""Decisions belong to the category tree they were made under: a reload onto models of another tree is
refused unless asked for, and asked for it starts that tree's store - a decision is never served, queued or
exported under a tree where its leaf is not a leaf."""
import shutil

import pandas as pd
from fastapi.testclient import TestClient
from test_review_page import queue_batch
from test_serve import KEY, served, wait_ready  # noqa: F401 - `served` is a fixture

from prodcat.data.tree import CategoryTree
from prodcat.review.store import ReviewStore
from prodcat.serve.app import create_app


def ask(client, product: dict) -> dict:
    """The service's answer for one product, with review (decisions answer, flagged products queue)."""
    answer = client.post("/v1/predict", json={"products": [product], "threshold": 0.999, "review": True},
                         headers={"X-API-Key": KEY})
    assert answer.status_code == 200, answer.text
    return answer.json()["predictions"][0]


def test_a_reload_onto_another_tree_is_refused_unless_asked_and_then_serves_no_old_decision(served, tmp_path):
    _, models, tmp = served
    copy = tmp_path / "w" / "models" / models.name
    shutil.copytree(models, copy)
    (tmp_path / "reviewers.txt").write_text("ann annkey-0001\n")
    url = f"sqlite:///{tmp_path / 'review.db'}"
    review = {"reviewers_file": str(tmp_path / "reviewers.txt"), "url": url}
    old_tree = CategoryTree.from_csv(copy / "categories_tree.csv")
    with TestClient(create_app(copy, {"api_key_file": str(tmp / "key.txt")}, review=review)) as client:
        wait_ready(client)
        assert queue_batch(client).status_code == 200
        old = ReviewStore(url, copy.name, old_tree)
        item = old.claim_next("ann")
        old.decide(item["product_id"], 23, "correct", "ann", "k-1")  # 23 'Dry' is a leaf of the old tree
        product = {"id": 1, "title": item["snapshot"]["title"],
                   "short_description": item["snapshot"]["short_description"]}
        answer = ask(client, product)
        assert answer["source"] == "review" and answer["predicted_category_id"] == 23

        tree = pd.read_csv(copy / "categories_tree.csv")  # the tree changes: 23 gets a child, so is no leaf
        pd.concat([tree, pd.DataFrame({"id": [25], "title": ["Dry, grain-free"], "parent_id": [23]})]).to_csv(
            copy / "categories_tree.csv", index=False)
        refused = client.post("/v1/reload", headers={"X-API-Key": KEY})
        assert refused.status_code == 409 and refused.headers["content-type"] == "application/problem+json"
        body = refused.json()
        assert "tree-changed" in body["type"] and old_tree.fingerprint in body["detail"]
        assert "new_tree=true" in body["detail"]
        assert ask(client, product)["source"] == "review"  # the old models answer

        reloaded = client.post("/v1/reload", params={"new_tree": "true"}, headers={"X-API-Key": KEY})
        assert reloaded.status_code == 200, reloaded.text
        answer = ask(client, product)
        assert answer["source"] == "model" and answer["predicted_category_id"] != 23
        new_tree = CategoryTree.from_csv(copy / "categories_tree.csv")
        new = ReviewStore(url, copy.name, new_tree)
        assert new.counters()["done"] == 0  # the new tree's store starts without the old decisions
        assert new.export_training_rows().empty
        assert new.item(item["product_id"]) is None and new.counters()["left"] == 0
        assert queue_batch(client).status_code == 200  # the same products queue again, under the new tree
        assert new.item(item["product_id"]) is not None and old.counters()["done"] == 1
        assert old.export_training_rows()[["id", "category_id"]].values.tolist() == [[item["product_id"], 23]]
        client.cookies.set("prodcat_reviewer", "")
        signed = client.post("/review/sign-in", data={"key": "annkey-0001"}, follow_redirects=False)
        assert signed.status_code in (200, 303)
        page = client.get("/review")
        assert page.status_code == 200 and item["snapshot"]["title"] not in page.text  # no old queue shown
        old.close()
        new.close()


def test_rows_of_an_earlier_store_keyed_by_the_dataset_alone_join_the_first_tree_whose_leaves_they_name(tmp_path):
    from conftest import TREE
    from sqlalchemy import update

    from prodcat.review.items import QueueItem
    from prodcat.review.schema import decisions, queue

    tree = CategoryTree.from_frame(TREE)
    url = f"sqlite:///{tmp_path / 'review.db'}"
    store = ReviewStore(url, "tiny", tree)
    store.enqueue([QueueItem(product_id=7, snapshot={"title": "dog dry kibble"}, suggestions=[(23, 0.6)],
                             model_leaf=23, confidence=0.6, model_version="v1")])
    store.decide(7, 23, "accept", "ann", "k-7")
    with store.engine.begin() as conn:  # as an earlier prodcat left it: keyed by the dataset's name
        for table in (queue, decisions):
            conn.execute(update(table).values(dataset="tiny"))
    store.close()
    moved = CategoryTree.from_frame(pd.concat([TREE, pd.DataFrame({"id": [25], "title": ["x"], "parent_id": [23]})]))
    assert ReviewStore(url, "tiny", moved).export_training_rows().empty  # 23 is no leaf there: not adopted
    adopted = ReviewStore(url, "tiny", tree).export_training_rows()
    assert adopted[["id", "category_id"]].values.tolist() == [[7, 23]]
