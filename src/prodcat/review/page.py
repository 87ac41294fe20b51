"""The reviewer's web page, rendered on the server (plain HTML and a little JavaScript, no build step): a
sign-in form, then one product at a time - its fields, photo and the model's suggestions with their
probabilities and title paths - and the counters. Keys: 1-9 take a suggestion, / opens a type-ahead over
every leaf path, s skips, u undoes the last decision. Every key press posts the decision and gets the next
product's HTML in the same answer (one round trip); the decision is stored before the answer is sent."""
from __future__ import annotations

import uuid
from html import escape

from prodcat.data.text import parse_characteristics

STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
header{display:flex;gap:1.5em;align-items:center;padding:.6em 1.2em;background:#1d2330;color:#fff}
header b{font-size:1.1em} header form{margin-left:auto} header button{font-size:.85em}
#counters span{margin-right:1.2em} main{max-width:980px;margin:1.2em auto;padding:0 1em}
.card{background:#fff;border-radius:8px;padding:1.2em 1.4em;box-shadow:0 1px 3px #0002}
.product{display:flex;gap:1.4em} .product img{max-width:220px;max-height:220px;object-fit:contain}
h1{font-size:1.3em;margin:.1em 0 .4em} .meta{color:#5b6475;font-size:.9em} dl{margin:.6em 0}
dt{float:left;clear:left;width:11em;color:#5b6475} dd{margin-left:11.5em} .desc{white-space:pre-wrap}
ol.suggestions{list-style:none;padding:0;margin:1em 0 0} ol.suggestions li{display:flex;gap:.8em;
align-items:baseline;padding:.45em .6em;border-radius:6px;margin:.2em 0;background:#f4f5f7}
kbd{display:inline-block;min-width:1.4em;text-align:center;border:1px solid #aab;border-radius:4px;
background:#fff;font-weight:600} .prob{width:4.5em;text-align:right;font-variant-numeric:tabular-nums}
.bar{height:6px;background:#3b82f6;border-radius:3px} .path{flex:1}
.help{color:#5b6475;font-size:.85em;margin-top:1em} .audit{color:#9a5b00;font-weight:600}
#picker{display:none;margin-top:1em} #picker input{width:100%;font-size:1em;padding:.45em}
#picker ol{list-style:none;padding:0;margin:.3em 0;max-height:18em;overflow:auto}
#picker li{padding:.3em .5em;border-radius:4px} #picker li.on{background:#dbe7ff}
#error{color:#b00020;min-height:1.2em} .done{text-align:center;padding:3em 1em;font-size:1.1em}
"""

SCRIPT = """
const ui = {busy: false, picked: 0, hits: []};
const $ = (id) => document.getElementById(id);
function current() { return $('product') ? $('product').dataset : null; }
async function post(url, body) {
  if (ui.busy) return;
  ui.busy = true;
  const started = performance.now();
  try {
    const r = await fetch(url, {method: 'POST', credentials: 'same-origin',
      headers: {'Content-Type': 'application/json'}, body: JSON.stringify(body)});
    const answer = await r.json().catch(() => ({}));
    if (!r.ok) { $('error').textContent = answer.detail || answer.title || ('error ' + r.status); return; }
    $('error').textContent = '';
    $('item').innerHTML = answer.item_html;
    $('counters').innerHTML = answer.counters_html;
    closePicker();
    window.prodcatShownMs = performance.now() - started;  // key press to the next product shown
  } catch (e) {
    $('error').textContent = 'the service did not answer (' + e + '); press the key again';
  } finally { ui.busy = false; }
}
function decide(action, leaf) {  // the key comes with the product: a retry after a lost answer is the same decision
  const p = current();
  if (!p) return;
  post('/review/decide', {product_id: Number(p.id), category_id: leaf, action: action, idempotency_key: p.key});
}
function undo() {
  const u = document.querySelector('[data-undo]');
  if (u) post('/review/undo', {idempotency_key: u.dataset.undo});
}
function openPicker() {
  if (!current()) return;
  $('picker').style.display = 'block';
  $('q').value = ''; ui.hits = []; ui.picked = 0; render(); $('q').focus();
}
function closePicker() { if ($('picker')) { $('picker').style.display = 'none'; $('q').blur(); } }
function render() {
  $('hits').innerHTML = ui.hits.map((h, i) =>
    '<li class="' + (i === ui.picked ? 'on' : '') + '" data-id="' + h.id + '">' +
    h.path.replace(/[&<>]/g, c => ({'&': '&amp;', '<': '&lt;', '>': '&gt;'}[c])) + '</li>').join('');
}
let searching = 0;
async function search() {
  const q = $('q').value.trim(), mine = ++searching;
  if (!q) { ui.hits = []; render(); return; }
  const r = await fetch('/v1/categories?limit=20&q=' + encodeURIComponent(q));
  const answer = await r.json().catch(() => ({}));
  if (mine !== searching) return;  // a later key press already asked again
  ui.hits = (answer.categories || []).map(c => ({id: c.id, path: c.path}));
  ui.picked = 0; render();
}
document.addEventListener('input', (e) => { if (e.target.id === 'q') search(); });
document.addEventListener('click', (e) => {
  const li = e.target.closest('#hits li');
  if (li) decide('correct', Number(li.dataset.id));
});
document.addEventListener('keydown', (e) => {
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const picking = $('picker') && $('picker').style.display === 'block';
  if (picking) {
    if (e.key === 'Escape') { closePicker(); e.preventDefault(); }
    else if (e.key === 'ArrowDown') { ui.picked = Math.min(ui.picked + 1, ui.hits.length - 1); render(); e.preventDefault(); }
    else if (e.key === 'ArrowUp') { ui.picked = Math.max(ui.picked - 1, 0); render(); e.preventDefault(); }
    else if (e.key === 'Enter' && ui.hits.length) { decide('correct', ui.hits[ui.picked].id); e.preventDefault(); }
    return;
  }
  if (e.target.tagName === 'INPUT') return;
  const n = Number(e.key);
  if (n >= 1 && n <= 9) {
    const s = document.querySelector('#product li[data-n="' + n + '"]');
    if (s) decide('accept', Number(s.dataset.id));
    e.preventDefault();
  } else if (e.key === '/') { openPicker(); e.preventDefault(); }
  else if (e.key === 's') { decide('skip', null); e.preventDefault(); }
  else if (e.key === 'u') { undo(); e.preventDefault(); }
});
"""


def page(body: str, title: str = "prodcat review") -> str:
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{escape(title)}</title>"
            f"<meta name=viewport content='width=device-width,initial-scale=1'><style>{STYLE}</style></head>"
            f"<body>{body}</body></html>")


def sign_in(message: str = "") -> str:
    """The sign-in form (a reviewer's key); `message`: why the last try failed."""
    note = f"<p id=error>{escape(message)}</p>" if message else "<p id=error></p>"
    return page("<header><b>prodcat review</b></header><main><div class=card><h1>Sign in</h1>"
                "<form method=post action='/review/sign-in'><label>Reviewer key "
                "<input name=key type=password autocomplete=current-password autofocus required></label> "
                f"<button>Sign in</button></form>{note}</div></main>")


def review_page(reviewer: str, item_html: str, counters_html: str) -> str:
    """The signed-in page around the current product."""
    return page(f"<header><b>prodcat review</b><div id=counters>{counters_html}</div>"
                f"<form method=post action='/review/sign-out'><span>{escape(reviewer)}</span> "
                "<button>Sign out</button></form></header>"
                f"<main><div id=error></div><div id=item>{item_html}</div>"
                "<div id=picker class=card><input id=q placeholder='any word of the category path' "
                "autocomplete=off><ol id=hits></ol></div>"
                "<p class=help><kbd>1</kbd>-<kbd>9</kbd> take a suggestion · <kbd>/</kbd> search every leaf "
                "(arrows, Enter) · <kbd>s</kbd> skip · <kbd>u</kbd> undo the last decision</p></main>"
                f"<script>{SCRIPT}</script>")


def counters_html(counters: dict) -> str:
    """done / left / suggestion 1 taken / audit precision so far."""
    def share(value) -> str:
        return "-" if value is None else f"{value:.1%}"

    return (f"<span>done <b>{counters['done']}</b></span><span>left <b>{counters['left']}</b></span>"
            f"<span>suggestion 1 taken <b>{share(counters.get('suggestion1_share'))}</b></span>"
            f"<span>audit precision <b>{share(counters.get('audit_precision'))}</b> "
            f"({counters.get('audit_decided', 0)})</span>")


def item_html(item: dict | None, title_path, photo_url: str | None = None) -> str:
    """One product to decide, or the note that nothing is left. `title_path(leaf)`: a leaf's full path.
    Each rendering carries fresh idempotency keys for its decision and for an undo: a retry of the same key
    press (its answer lost) sends the same key and is stored once."""
    keys = f"data-key={uuid.uuid4().hex} data-undo={uuid.uuid4().hex}"
    if item is None:
        return (f"<div class='card done' {keys}>Nothing left to review. New products arrive as they are "
                "flagged.</div>")
    snap = item["snapshot"]
    fields = "".join(f"<dt>{escape(name or 'value')}</dt><dd>{escape(' | '.join(values))}</dd>"
                     for name, values in parse_characteristics(snap.get("name_value_characteristics")))
    numbers = " · ".join(f"{label} {snap[key]:g}" for key, label in (("rating", "rating"),
                                                                      ("feedback_quantity", "feedback"))
                         if isinstance(snap.get(key), (int, float)))
    photo = f"<img src='{escape(photo_url)}' alt='product photo'>" if photo_url else ""
    suggestions = "".join(
        f"<li data-n={n} data-id={int(leaf)}><kbd>{n}</kbd><span class=prob>{prob:.1%}</span>"
        f"<span class=path>{escape(title_path(int(leaf)))}</span>"
        f"<div class=bar style='width:{max(prob, 0.0) * 80:.0f}px'></div></li>"
        for n, (leaf, prob) in enumerate(item["suggestions"][:9], start=1))
    audit = " · <span class=audit>audit sample (accepted without review)</span>" if item["reason"] == "audit" else ""
    desc = snap.get("short_description") or ""
    return (f"<div class=card id=product data-id={int(item['product_id'])} {keys}><div class=product>{photo}<div>"
            f"<h1>{escape(snap.get('title') or '(no title)')}</h1>"
            f"<div class=meta>product {int(item['product_id'])}{' · ' + numbers if numbers else ''}{audit}</div>"
            f"{f'<p class=desc>{escape(desc)}</p>' if desc else ''}<dl>{fields}</dl></div></div>"
            f"<ol class=suggestions>{suggestions or '<li>no suggestion: press / to search</li>'}</ol></div>")
