"""A static HTML page to read trajectories: policy text, searches, and retrieved text shown as masked."""

from __future__ import annotations

import html
from collections.abc import Iterable
from pathlib import Path

from searchr1.io import atomic_open
from searchr1.rollout.trajectories import load_trajectories

_CSS = """
body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#222}
.sample{border:1px solid #ccc;border-radius:6px;padding:1em;margin:1.5em 0}
.meta{font-size:.9em;color:#444}.ok{color:#070}.bad{color:#a00}
pre{white-space:pre-wrap;word-break:break-word;margin:.3em 0;font-size:.9em}
.gen{background:#eef6ff;border-left:3px solid #36c;padding:.3em .6em}
.obs{background:#eee;color:#777;border-left:3px solid #aaa;padding:.3em .6em}
.label{font-size:.75em;text-transform:uppercase;letter-spacing:.05em;color:#888}
"""


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _render_sample(r: dict) -> str:
    reward, answer = r.get("reward", 0.0), r.get("answer")
    cls = "ok" if r.get("metrics", {}).get("em", 0) > 0 else "bad"
    parts = [
        f'<div class="sample"><h3>{_e(r.get("question", ""))}</h3>',
        f'<div class="meta">id {_e(r.get("uid", ""))} · gold: {_e(" | ".join(r.get("golden_answers", [])))} · '
        f'answer: <b class="{cls}">{_e(answer)}</b> · reward {float(reward):.3f} · '
        f'searches {_e(r.get("num_searches", 0))} · finished {_e(r.get("finished", False))} · '
        f'truncated {_e({k: v for k, v in r.get("truncated", {}).items() if v})}</div>',
    ]
    for i, t in enumerate(r.get("turns", []), start=1):
        if t.get("action") == "retrieve":
            parts.append(f'<div class="label">passages in the prompt: {_e(", ".join(t.get("doc_ids", [])))}</div>')
            continue
        label = f"turn {i} · {t.get('action')}" + (f" · query: {t['query']}" if t.get("query") else "")
        parts.append(f'<div class="label">{_e(label)} · generated (trained on)</div>')
        parts.append(f'<pre class="gen">{_e(t.get("text", ""))}</pre>')
        if t.get("observation"):
            docs = ", ".join(t.get("doc_ids", []))
            what = f"retrieved ({_e(docs)})" if docs else "environment message"
            parts.append(f'<div class="label">{what} — masked from loss</div>')
            parts.append(f'<pre class="obs">{_e(t["observation"])}</pre>')
    parts.append("</div>")
    return "\n".join(parts)


def render_html(records: Iterable[dict], title: str = "Search-R1 trajectories") -> str:
    """A self-contained HTML page for trajectory records (Sample.to_record()); all text is escaped."""
    body = "\n".join(_render_sample(r) for r in records)
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f"<style>{_CSS}</style></head><body><h1>{_e(title)}</h1>\n{body}\n</body></html>\n"
    )


def write_viewer(jsonl_path: str | Path, html_path: str | Path, limit: int | None = None) -> int:
    """Render a trajectories jsonl file to ``html_path`` (atomically); returns the number of samples shown."""
    records = load_trajectories(jsonl_path)[:limit]
    with atomic_open(html_path) as fh:
        fh.write(render_html(records, title=f"Trajectories: {Path(jsonl_path).name}"))
    return len(records)
