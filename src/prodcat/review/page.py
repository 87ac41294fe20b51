"""The reviewer's web page, rendered on the server (plain HTML and a little JavaScript, no build step): a
sign-in form, then one product at a time - its fields, photo and the model's suggestions with their
probabilities and title paths - and the counters. Keys: 1-9 take a suggestion, / opens a type-ahead over
every leaf path, s skips, u undoes the last decision; d unfolds the long text, p enlarges the photo. A group's
lead (prodcat.review.groups) shows its similar products below it, a line each with the words that differ from
the lead's title marked: the keys decide them all, x then a member's number (or a click on its line) leaves
that member out (queued alone again), u undoes the whole group. Every
key press posts the decision and gets the next product's HTML in the same answer (one round trip); the
decision is stored before the answer is sent, and a status line then says what was decided.

Guards: a key decides only a product that was on screen for `review.dwell_ms` (the suggestions are dimmed
until then; earlier presses and a held key's repeats decide nothing); long text is folded and the product
area scrolls on its own, so the suggestions and key hints stay on screen; the page's only <script> and
<style> carry the response's CSP nonce (prodcat.serve.security) - no inline handler or style attribute."""
from __future__ import annotations

import secrets
import uuid
from contextvars import ContextVar
from html import escape

from prodcat.data.text import normalize, parse_characteristics
from prodcat.review.schema import SUSPECT

# the Content-Security-Policy nonce of the page being answered: the service's SecurityHeaders sets one per
# request under /review (prodcat.serve.security); outside such a request a fresh one that no policy names
PAGE_NONCE: ContextVar[str | None] = ContextVar("prodcat_csp_nonce", default=None)

STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
header{display:flex;flex-wrap:wrap;gap:.2em 1.5em;align-items:center;padding:.5em 1.2em;background:#1d2330;
color:#fff} header b{font-size:1.1em} header form{margin-left:auto} header button{font-size:.85em}
#counters span{margin-right:1.2em} main{max-width:980px;margin:1.2em auto;padding:0 1em}
.card{background:#fff;border-radius:8px;padding:1.2em 1.4em;box-shadow:0 1px 3px #0002}
.product{display:flex;gap:1.4em} .product>div{min-width:0;flex:1}
.product img{max-width:220px;max-height:min(220px,28vh);object-fit:contain;cursor:zoom-in}
.product img.big{position:fixed;inset:0;margin:auto;width:94vw;height:94vh;max-width:none;max-height:none;
z-index:9;background:#1d2330;box-shadow:0 0 0 100vmax #000a;cursor:zoom-out}
h1{font-size:1.3em;margin:.1em 0 .4em} .meta{color:#5b6475;font-size:.9em} dl{margin:.6em 0}
dt{float:left;clear:left;width:11em;color:#5b6475} dd{margin-left:11.5em}
h1,.desc,dd{overflow-wrap:anywhere} .desc{white-space:pre-wrap;margin:.5em 0}
.folded h1{display:-webkit-box;-webkit-box-orient:vertical;-webkit-line-clamp:2;overflow:hidden}
.folded .desc{display:-webkit-box;-webkit-box-orient:vertical;-webkit-line-clamp:4;overflow:hidden}
.folded dl{max-height:7.5em;overflow:hidden} .more{display:none}
#product.clipped.folded .more{display:inline}
ol.suggestions{list-style:none;padding:0;margin:1em 0 0;transition:opacity .12s;position:relative}
ol.suggestions li{display:flex;gap:.8em;align-items:baseline;padding:.45em .6em;border-radius:6px;margin:.2em 0;
background:#f4f5f7} #product.wait ol.suggestions{opacity:.35}
#product.wait ol.suggestions::before{content:'look at the product first';position:absolute;right:.6em;
top:-1.25em;color:#5b6475;font-size:.85em}
kbd{display:inline-block;min-width:1.4em;text-align:center;border:1px solid #aab;border-radius:4px;
background:#fff;font-weight:600;color:#1d2330} .prob{width:4.5em;text-align:right;
font-variant-numeric:tabular-nums} .bar{height:6px;background:#3b82f6;border-radius:3px;width:0}
.path{flex:1;overflow-wrap:anywhere}
.help{color:#5b6475;font-size:.85em;margin-top:1em} .audit{color:#9a5b00;font-weight:600}
#picker{display:none;margin-top:1em} #picker.open{display:block} #picker input{width:100%;font-size:1em;
padding:.45em;box-sizing:border-box} #picker ol{list-style:none;padding:0;margin:.3em 0;
max-height:min(18em,30vh);overflow:auto} #picker li{padding:.3em .5em;border-radius:4px}
#picker li.on{background:#dbe7ff}
#error{color:#b00020;min-height:1.2em} #status{color:#1d6b2f;min-height:1.3em;white-space:nowrap;
overflow:hidden;text-overflow:ellipsis} .done{text-align:center;padding:3em 1em;font-size:1.1em}
.desk #error:empty{display:none} body.desk{height:100vh;height:100dvh;display:flex;flex-direction:column}
.desk main{flex:1;min-height:0;width:100%;box-sizing:border-box;display:flex;flex-direction:column;
margin:.3em auto .4em} .desk main>*{flex:none}
.desk #item{flex:0 1 auto;min-height:0;display:flex;flex-direction:column;overflow:auto}
.desk #product{flex:0 1 auto;min-height:0;display:flex;flex-direction:column}
.desk .product{flex:0 1 auto;min-height:4.5em;overflow:auto} .desk ol.suggestions{flex:none}
.desk .help{margin-top:.6em} .desk .group{flex:0 1 auto;min-height:3.2em;overflow:auto}
.group{margin-top:.6em;border-top:1px solid #dde1e8;padding-top:.4em} .group .meta{margin-bottom:.2em}
ol.members{list-style:none;padding:0;margin:0} ol.members li{display:flex;gap:.6em;align-items:baseline;
padding:.1em .4em;border-radius:4px;cursor:pointer;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
ol.members li:hover{background:#f4f5f7} ol.members li.out{color:#98a0ae;text-decoration:line-through}
ol.members li.out kbd{opacity:.5} ol.members .mt{overflow:hidden;text-overflow:ellipsis}
mark{background:#fff0b3;color:inherit;border-radius:2px} #product.xmode ol.members kbd{background:#dbe7ff}
@media (max-width:700px){.product{flex-direction:column} dt{float:none;width:auto} dd{margin-left:1em}
.card{padding:.8em}}
"""

# Keys: 1-9 / s u are the decisions and the undo; d and p only show more (never decide); Escape closes.
SCRIPT = """
const $ = (id) => document.getElementById(id);
const ui = {busy: false, picked: 0, hits: [], shownAt: 0, timer: 0, xmode: false, excluded: new Set(),
            dwell: Number(document.body.dataset.dwellMs || 0)};
function current() { return $('product') ? $('product').dataset : null; }
function short(text, n) {
  text = (text || '').replace(/\\s+/g, ' ').trim();
  return text.length > n ? text.slice(0, n - 1) + '\\u2026' : text;
}
function productTitle() { const h = document.querySelector('#product h1'); return short(h ? h.textContent : '', 80); }
function arm() {  // a product came on screen: no key decides it before the dwell is over (a visible wait)
  ui.shownAt = performance.now();
  ui.excluded = new Set();
  xmode(false);
  clearTimeout(ui.timer);
  const p = $('product');
  if (!p) return;
  p.querySelectorAll('.bar[data-w]').forEach(b => { b.style.width = b.dataset.w + 'px'; });
  const folded = [...p.querySelectorAll('.product h1, .product .desc, .product dl')];
  if (folded.some(x => x.scrollHeight > x.clientHeight + 1)) p.classList.add('clipped');  // say that d unfolds it
  const ready = () => { p.classList.remove('wait'); p.classList.add('ready'); };
  if (ui.dwell > 0) { p.classList.add('wait'); ui.timer = setTimeout(ready, ui.dwell); } else ready();
}
function seen() { return performance.now() - ui.shownAt >= ui.dwell; }
function xmode(on) { ui.xmode = on; if ($('product')) $('product').classList.toggle('xmode', on); }
function members() { return [...document.querySelectorAll('#product ol.members li')]; }
function exclude(li) {  // a member left out of the group's decision (again: back in)
  if (!li) return;
  const id = Number(li.dataset.member);
  if (ui.excluded.has(id)) ui.excluded.delete(id); else ui.excluded.add(id);
  li.classList.toggle('out', ui.excluded.has(id));
}
async function post(url, body, said) {
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
    arm();
    $('status').textContent = typeof said === 'function' ? said() : said;
    window.prodcatShownMs = performance.now() - started;  // key press to the next product shown
  } catch (e) {
    $('error').textContent = 'the service did not answer (' + e + '); press the key again';
  } finally { ui.busy = false; }
}
// the key comes with the product: a retry after a lost answer is the same decision
function decide(action, leaf, leafTitle) {
  const p = current();
  if (!p || !seen()) return;  // a press before the product could be seen decides nothing
  const what = short(leafTitle || ('category ' + leaf), 80), title = productTitle();
  const together = members().length - ui.excluded.size;
  const also = together > 0 ? ' and ' + together + ' similar' : '';
  const said = (action === 'skip' ? 'skipped ' + title + also : (action === 'accept' ? 'accepted ' : 'chose ') +
                what + ' for ' + title + also) + ', u to undo';
  post('/review/decide', {product_id: Number(p.id), category_id: leaf, action: action, idempotency_key: p.key,
                          excluded: [...ui.excluded]}, said);
}
function undo() {
  const u = document.querySelector('[data-undo]');
  if (u) post('/review/undo', {idempotency_key: u.dataset.undo},
              () => 'undid the last decision' + (current() ? ': ' + productTitle() + ' is back' : ''));
}
function unfold() { const p = $('product'); if (p) { p.classList.toggle('folded'); } }
function enlarge(on) {
  const img = document.querySelector('#product .product img');
  if (img) img.classList.toggle('big', on);
}
function openPicker() {
  if (!current()) return;
  $('picker').classList.add('open');
  $('q').value = ''; ui.hits = []; ui.picked = 0; render(); $('q').focus();
}
function closePicker() { if ($('picker')) { $('picker').classList.remove('open'); $('q').blur(); } }
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
  ui.hits = (answer.categories || []).map(c => ({id: c.id, path: c.path, title: c.title}));
  ui.picked = 0; render();
}
document.addEventListener('input', (e) => { if (e.target.id === 'q') search(); });
document.addEventListener('click', (e) => {
  const li = e.target.closest('#hits li');
  if (li) {
    const hit = ui.hits.find(h => h.id === Number(li.dataset.id));
    decide('correct', Number(li.dataset.id), hit && hit.title);
  } else if (e.target.closest('#product .product img')) enlarge();
  else if (e.target.closest('#product ol.members li')) exclude(e.target.closest('#product ol.members li'));
});
document.addEventListener('keydown', (e) => {
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const picking = $('picker') && $('picker').classList.contains('open');
  if (picking) {
    if (e.key === 'Escape') { closePicker(); e.preventDefault(); }
    else if (e.key === 'ArrowDown') {
      ui.picked = Math.min(ui.picked + 1, ui.hits.length - 1); render(); e.preventDefault();
    }
    else if (e.key === 'ArrowUp') { ui.picked = Math.max(ui.picked - 1, 0); render(); e.preventDefault(); }
    else if (e.key === 'Enter' && ui.hits.length) {
      if (!e.repeat) decide('correct', ui.hits[ui.picked].id, ui.hits[ui.picked].title);
      e.preventDefault();
    }
    return;
  }
  if (e.target.tagName === 'INPUT') return;
  const n = Number(e.key), digit = n >= 1 && n <= 9;
  if (!digit && !['/', 's', 'u', 'd', 'p', 'x', 'Escape'].includes(e.key)) { xmode(false); return; }
  e.preventDefault();
  if (e.repeat) return;  // a held key decides (and undoes) nothing more
  if (ui.xmode) {  // x then a member's number: that member is left out; any other key: no member
    xmode(false);
    if (digit) { exclude(document.querySelector('#product ol.members li[data-m="' + n + '"]')); return; }
  }
  if (e.key === 'x') { if (members().length) xmode(true); }
  else if (digit) {
    const s = document.querySelector('#product li[data-n="' + n + '"]');
    if (s) decide('accept', Number(s.dataset.id), s.dataset.leaf);
  } else if (e.key === '/') openPicker();
  else if (e.key === 's') decide('skip', null);
  else if (e.key === 'u') undo();
  else if (e.key === 'd') unfold();
  else if (e.key === 'p') enlarge();
  else if (e.key === 'Escape') enlarge(false);
});
arm();
"""


def page(body: str, title: str = "prodcat review", body_attrs: str = "") -> str:
    """A whole page; its <style> (and a <script> in `body` that uses `nonce()`) carries this response's CSP
    nonce: the Content-Security-Policy (prodcat.serve.security) runs nothing else inline."""
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{escape(title)}</title>"
            f"<meta name=viewport content='width=device-width,initial-scale=1'>"
            f"<style nonce='{nonce()}'>{STYLE}</style></head><body{body_attrs}>{body}</body></html>")


def nonce() -> str:
    return escape(PAGE_NONCE.get() or secrets.token_urlsafe(16), quote=True)


def sign_in(message: str = "") -> str:
    """The sign-in form (a reviewer's key); `message`: why the last try failed."""
    note = f"<p id=error>{escape(message)}</p>" if message else "<p id=error></p>"
    return page("<header><b>prodcat review</b></header><main><div class=card><h1>Sign in</h1>"
                "<form method=post action='/review/sign-in'><label>Reviewer key "
                "<input name=key type=password autocomplete=current-password autofocus required></label> "
                f"<button>Sign in</button></form>{note}</div></main>")


def review_page(reviewer: str, item_html: str, counters_html: str, dwell_ms: int = 300) -> str:
    """The signed-in page around the current product. `dwell_ms` (review.dwell_ms): how long a product is on
    screen before a key decides it - earlier presses, and a held key's repeats, decide nothing."""
    return page(f"<header><b>prodcat review</b><div id=counters>{counters_html}</div>"
                f"<form method=post action='/review/sign-out'><span>{escape(reviewer)}</span> "
                "<button>Sign out</button></form></header>"
                f"<main><div id=error></div><div id=status role=status aria-live=polite></div>"
                f"<div id=item>{item_html}</div>"
                "<div id=picker class=card><input id=q placeholder='any word of the category path' "
                "autocomplete=off><ol id=hits></ol></div>"
                "<p class=help><kbd>1</kbd>-<kbd>9</kbd> take a suggestion (for a whole group) · <kbd>/</kbd> "
                "search every leaf (arrows, Enter) · <kbd>s</kbd> skip · <kbd>u</kbd> undo the last decision · "
                "<kbd>x</kbd> then a number: leave a similar product out · <kbd>d</kbd> "
                "the whole text · <kbd>p</kbd> the photo large</p></main>"
                f"<script nonce='{nonce()}'>{SCRIPT}</script>",
                body_attrs=f" class=desk data-dwell-ms={max(int(dwell_ms), 0)}")


def counters_html(counters: dict) -> str:
    """done / left / suggestion 1 taken / audit precision so far."""
    def share(value) -> str:
        return "-" if value is None else f"{value:.1%}"

    return (f"<span>done <b>{counters['done']}</b></span><span>left <b>{counters['left']}</b></span>"
            f"<span>suggestion 1 taken <b>{share(counters.get('suggestion1_share'))}</b></span>"
            f"<span>audit precision <b>{share(counters.get('audit_precision'))}</b> "
            f"({counters.get('audit_decided', 0)})</span>")


def leaf_title(path: str) -> str:
    """A leaf's own title: the end of its title path ("" for a leaf not in the tree)."""
    return path.rsplit(" > ", 1)[-1]


def marked(title: str | None, lead_title: str | None) -> str:
    """A member's title, escaped, its words that are not among the lead's title words (normalised) marked."""
    lead = {w for word in (lead_title or "").split() for w in normalize(word).split()}
    out = []
    for word in (title or "").split():
        own = normalize(word).split()
        out.append(f"<mark>{escape(word)}</mark>" if own and not set(own) <= lead else escape(word))
    return " ".join(out) or "(no title)"


def group_html(item: dict) -> str:
    """The lead's similar products, one line each (x then its number, or a click, leaves it out)."""
    members = item.get("members") or []
    if not members:
        return ""
    lead = item["snapshot"].get("title")
    lines = "".join(f"<li data-m={n} data-member={int(m['product_id'])}><kbd>x</kbd><kbd>{n}</kbd>"
                    f"<span class=mt>{marked(m['snapshot'].get('title'), lead)}</span></li>"
                    for n, m in enumerate(members, start=1))
    return (f"<div class=group><div class=meta>decided with {len(members)} similar product"
            f"{'s' if len(members) > 1 else ''} (the words that differ are marked): <kbd>x</kbd> then a number, "
            f"or a click, leaves one out</div><ol class=members>{lines}</ol></div>")


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
    by_name = item["reason"] != SUSPECT  # a catalogue check's 0 is the current label's own probability
    suggestions = "".join(
        f"<li data-n={n} data-id={int(leaf)} data-leaf='{escape(leaf_title(title_path(int(leaf))), quote=True)}'>"
        f"<kbd>{n}</kbd><span class=prob>{prob:.1%}</span><span class=path>{escape(title_path(int(leaf)))}</span>"
        + (" <span class=audit>by its name: a leaf with few or no training products</span>"
           if by_name and prob <= 0 else "") +
        f"<div class=bar data-w={max(prob, 0.0) * 80:.0f}></div></li>"  # the page sizes it (no style attribute)
        for n, (leaf, prob) in enumerate(item["suggestions"][:9], start=1))
    audit = {"audit": " · <span class=audit>audit sample (accepted without review)</span>",
             "suspect": " · <span class=audit>catalogue check: its training label is among the suggestions</span>"
             }.get(item["reason"], "")
    desc = snap.get("short_description") or ""
    return (f"<div class='card folded' id=product data-id={int(item['product_id'])} {keys}><div class=product>"
            f"{photo}<div><h1>{escape(snap.get('title') or '(no title)')}</h1>"
            f"<div class=meta>product {int(item['product_id'])}{' · ' + numbers if numbers else ''}{audit}"
            "<span class=more> · folded: <kbd>d</kbd> shows the whole text</span></div>"
            f"{f'<p class=desc>{escape(desc)}</p>' if desc else ''}<dl>{fields}</dl></div></div>"
            f"{group_html(item)}"
            f"<ol class=suggestions>{suggestions or '<li>no suggestion: press / to search</li>'}</ol></div>")
