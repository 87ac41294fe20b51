"""The service under a newer category tree (`serve.tree`, `./run.sh serve --tree FILE`): answers with its
paths, a prediction into a removed node or one that is no longer a leaf flagged and named (as `predict
--tree`), its new leaves in the zero-shot suggestions, in /v1/categories and choosable by reviewers (the
review store of that tree); an edited tree file answers at the next reload, a bad one is named."""
import uuid

import pandas as pd
from fastapi.testclient import TestClient
from test_data_tree_change import changed_tree
from test_serve import KEY, invoke, served, wait_ready, wait_until  # noqa: F401 - `served` is a fixture

from prodcat.data.tree import CategoryTree
from prodcat.review.store import ReviewStore
from prodcat.serve.app import create_app

REMOVED = "removed from the tree"


def service(models, tmp, tree, folder, threshold=0.0):
    """The service answering under `tree` with a review desk (reviewer ann) whose store is under `folder`."""
    (folder / "reviewers.txt").write_text("ann annkey-0001\n")
    review = {"reviewers_file": str(folder / "reviewers.txt"), "url": f"sqlite:///{folder / 'review.db'}"}
    settings = {"api_key_file": str(tmp / "key.txt"), "tree": str(tree), "threshold": threshold, "min_precision": None}
    return TestClient(create_app(models, settings, review=review))


def predicted(client, *titles, top=3) -> list[dict]:
    answer = client.post("/v1/predict", json={"products": [{"id": i, "title": t} for i, t in enumerate(titles)],
                                              "top": top})
    assert answer.status_code == 200, answer.text
    return answer.json()["predictions"]


def test_predictions_categories_and_info_under_a_newer_tree(served, tmp_path):
    _, models, tmp = served
    new = changed_tree(tmp_path / "new_tree.csv")  # 12 removed, 24 moved under Food, 23 given a child, 30-50 added
    newer = CategoryTree.from_csv(new)
    with service(models, tmp, new, tmp_path) as client:
        wait_ready(client)
        bread, wet, dry, milk = predicted(client, "bread loaf bakery brand1", "dog wet can brand2",
                                          "dog dry kibble brand3", "milk dairy bottle brand0")
        assert bread["predicted_category_id"] == 12 and bread["needs_review"]  # a threshold of 0 accepts the rest
        assert bread["tree_problem"] == REMOVED and bread["category_path"] == ""
        assert dry["predicted_category_id"] == 23 and dry["needs_review"]
        assert dry["tree_problem"].startswith("no longer a leaf")
        assert wet["predicted_category_id"] == 24 and wet["category_path"] == "Food > Wet"  # moved: its new path
        assert not wet["needs_review"] and wet["tree_problem"] is None
        assert milk["category_path"] == "Food > Milk and cream" and not milk["needs_review"]
        alternatives = [a["category_id"] for a in predicted(client, "toy 7 for kids", top=5)[0]["alternatives"]]
        assert 38 in alternatives  # a new leaf ('Toy 7') suggested by its name at once

        tree = client.get("/v1/categories").json()
        ids = {c["id"] for c in tree["categories"]}
        assert tree["total"] == len(newer) and {25, 30, 38, 50} <= ids and 12 not in ids
        assert next(c for c in tree["categories"] if c["id"] == 23)["is_leaf"] is False
        found = client.get("/v1/categories", params={"q": "toys toy 12"}).json()["categories"]
        assert [(c["id"], c["path"]) for c in found] == [(43, "Toys > Toy 12")]  # the review page's picker
        assert client.get("/v1/categories", params={"q": "bread"}).json()["total"] == 0

        info = client.get("/v1/info").json()
        assert info["tree"] == {"file": str(new), "fingerprint": newer.fingerprint, "nodes": len(newer),
                                "leaves": len(newer.leaves),
                                "models_fingerprint": CategoryTree.from_csv(models / "categories_tree.csv").fingerprint}
        assert info["leaves"] == len(newer.leaves) and info["categories"] == len(newer) - 1


def test_a_reviewer_decides_into_a_new_leaf_in_the_newer_trees_store(served, tmp_path):
    _, models, tmp = served
    new = changed_tree(tmp_path / "new_tree.csv")
    newer = CategoryTree.from_csv(new)
    with service(models, tmp, new, tmp_path) as client:
        wait_ready(client)
        # predicted into a removed leaf (12) and a node that is no longer a leaf (23): queued however confident
        products = [{"id": 70_000, "title": "toy 3 bread loaf bakery"}, {"id": 70_001, "title": "dog dry kibble xl"}]
        queued = client.post("/v1/predict", json={"products": products, "threshold": 0, "review": True},
                             headers={"X-API-Key": KEY})
        assert queued.status_code == 200, queued.text
        store = ReviewStore(f"sqlite:///{tmp_path / 'review.db'}", models.name, newer)  # keyed by the newer tree
        assert store.item(70_000) is not None and store.item(70_001) is not None
        assert store.item(70_000)["model_leaf"] == 12 and store.item(70_001)["model_leaf"] == 23

        signed = TestClient(client.app)
        assert signed.post("/review/sign-in", data={"key": "annkey-0001"}, follow_redirects=False).status_code == 303
        assert signed.get("/review").status_code == 200
        store.claim_next("ann")
        decide = {"product_id": 70_000, "category_id": 34, "action": "correct"}  # 34 'Toy 3': a new leaf
        answer = signed.post("/review/decide", json=decide | {"idempotency_key": str(uuid.uuid4())})
        assert answer.status_code == 200, answer.text
        assert store.export_training_rows()[["id", "category_id"]].values.tolist() == [[70_000, 34]]
        for leaf, problem in ((12, "not a category"), (23, "is not a leaf")):  # removed; no longer a leaf
            refused = signed.post("/review/decide", json={"product_id": 70_001, "category_id": leaf,
                                                          "action": "correct", "idempotency_key": str(uuid.uuid4())})
            assert refused.status_code == 422 and problem in refused.text, refused.text
        accept = signed.post("/review/decide", json={"product_id": 70_001, "category_id": None, "action": "accept",
                                                     "idempotency_key": str(uuid.uuid4())})
        assert accept.status_code == 422 and "is not a leaf" in accept.text, accept.text  # never accepted
        again = client.post("/v1/predict", json={"id": 1, "title": "toy 3 bread loaf bakery"}).json()["predictions"][0]
        assert again["source"] == "review" and again["predicted_category_id"] == 34
        assert again["category_path"] == "Toys > Toy 3" and again["tree_problem"] is None
        models_store = ReviewStore(f"sqlite:///{tmp_path / 'review.db'}", models.name,
                                   CategoryTree.from_csv(models / "categories_tree.csv"))
        assert models_store.item(70_000) is None  # the models' own tree's store holds none of it
        store.close()
        models_store.close()


def test_an_edited_tree_file_answers_at_the_next_reload_and_a_bad_one_is_refused(served, tmp_path):
    _, models, tmp = served
    new = changed_tree(tmp_path / "new_tree.csv")
    headers = {"X-API-Key": KEY}
    with service(models, tmp, new, tmp_path) as client:
        wait_ready(client)
        before = client.get("/v1/info").json()["tree"]["fingerprint"]
        tree = pd.read_csv(new)
        pd.concat([tree, pd.DataFrame({"id": [60], "title": ["Puzzles"], "parent_id": [30]})]).to_csv(new, index=False)
        reloaded = client.post("/v1/reload", headers=headers)  # no new_tree=true: the operator edited serve.tree
        assert reloaded.status_code == 200, reloaded.text
        assert [c["id"] for c in client.get("/v1/categories", params={"q": "puzzles"}).json()["categories"]] == [60]
        after = client.get("/v1/info").json()["tree"]["fingerprint"]
        assert after != before and after == CategoryTree.from_csv(new).fingerprint

        new.write_text("name,size\nx,1\n")  # not a tree
        failed = client.post("/v1/reload", headers=headers)
        assert failed.status_code >= 400 and failed.headers["content-type"] == "application/problem+json"
        assert "serve.tree" in failed.json()["detail"] and "missing column" in failed.json()["detail"]
        info = client.get("/v1/info").json()
        assert info["tree"]["fingerprint"] == after and info["reload"]["last_outcome"].startswith("failed")
        assert predicted(client, "bread loaf bakery")[0]["tree_problem"] == REMOVED  # the old state answers
        new.unlink()
        failed = client.post("/v1/reload", headers=headers)
        assert failed.status_code >= 400 and "file not found" in failed.json()["detail"]
        assert client.get("/v1/categories", params={"q": "puzzles"}).json()["total"] == 1


def test_a_bad_tree_file_at_start_is_one_clear_error(served, tmp_path):
    _, models, tmp = served
    r = invoke("serve", "--models", models, "--tree", tmp_path / "missing.csv")
    assert r.exit_code == 1 and "serve.tree" in r.output and "file not found" in r.output, r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1
    (tmp_path / "bad.csv").write_text("id,title,parent_id\n1,root,0\n2,loop,2\n")
    r = invoke("serve", "--models", models, "--set", f"serve.tree={tmp_path / 'bad.csv'}")
    assert r.exit_code == 1 and "serve.tree" in r.output and "cycle" in r.output and "Traceback" not in r.output
    with TestClient(create_app(models, {"tree": str(tmp_path / "missing.csv")})) as client:  # the service itself
        wait_until(lambda: client.get("/health/ready").status_code == 503
                   and "file not found" in client.get("/health/ready").text)
