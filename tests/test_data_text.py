from prodcat.data.text import build_text, lemmatize, normalize, parse_characteristics, product_texts, tokenize


def test_parse_characteristics():
    assert parse_characteristics("Цвет: красный | синий / Объем: 1/2 л") == [
        ("Цвет", ["красный", "синий"]), ("Объем", ["1/2 л"])]
    assert parse_characteristics(None) == [] and parse_characteristics("") == []
    assert parse_characteristics("just a value") == [("", ["just a value"])]


def test_normalize_units_case_punctuation():
    assert normalize("Молоко «Домик» 3,2% 1,5 Л; Ёжик!") == "молоко домик 3.2% 1.5л ежик"
    assert normalize("<p>Pack of 2, 500 ml</p>") == "pack of 2 500ml"
    assert normalize(None) == "" and normalize(float("nan")) == ""


def test_build_text_handles_missing_fields():
    text = build_text("Кошачий Корм", None, "Бренд: Whiskas")
    assert text == "кошачий корм бренд whiskas"
    assert build_text(None, None, None) == ""
    assert build_text("A", "B " * 10, None, {"description_chars": 4, "title_repeat": 2}) == "a a b b"


def test_lemmatize_russian_keeps_other_tokens():
    assert lemmatize("кошачьи корма для котят 500мл") == "кошачий корм для котенок 500мл"
    assert tokenize("кошка-собака, 3.5л") == ["кошка-собака", ",", "3.5", "л"]


def test_product_texts_cached(tiny, tmp_path):
    from prodcat.data import text
    from prodcat.data.dataset import load_dataset

    ds = load_dataset(tiny)
    texts = product_texts(ds.train, {"lemmatize": True}, tmp_path)
    assert len(texts) == 120 and texts.index[0] == 1000
    files = list(tmp_path.glob("text-*.parquet"))
    assert len(files) == 1
    text._MEMO.clear()  # a new process: read from the disk cache
    assert product_texts(ds.train, {"lemmatize": True}, tmp_path).equals(texts)
    assert len(list(tmp_path.glob("text-*.parquet"))) == 1
    product_texts(ds.train, {"lemmatize": False}, tmp_path)
    assert len(list(tmp_path.glob("text-*.parquet"))) == 2
    # keyed by content, not by ids: the same ids with another title get another text
    changed = ds.train.assign(title=ds.train["title"].where(ds.train.index != 0, "совсем другой товар"))
    again = product_texts(changed, {"lemmatize": True}, tmp_path)
    assert again.iloc[0] != texts.iloc[0] and again.iloc[1:].equals(texts.iloc[1:])


def test_progress_without_a_terminal_is_plain_lines(capsys, monkeypatch):
    """No terminal (CI, nohup, a log): one plain line per ~interval with counts, elapsed and time left."""
    import time

    from prodcat.progress import progress

    monkeypatch.setattr("sys.stderr.isatty", lambda: False, raising=False)

    def slow():
        for i in range(6):
            time.sleep(0.05)
            yield i

    assert list(progress(slow(), 6, "demo", "product", every=0.1)) == list(range(6))
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln]
    assert lines and all(ln.startswith("[demo] ") for ln in lines) and "\r" not in err
    assert any("/6 products (" in ln and "s left" in ln for ln in lines)
